"""Fuzzing the gateway with schemathesis against its own OpenAPI document, on the real stack
(issue 13 item 7): the ``/openapi.json`` that ``tandem up`` serves, real workers and model.

Each operation gets ``EXAMPLES`` positive cases (valid by the document) and, where its inputs can
be violated at all, ``EXAMPLES`` negative ones (the body or a query parameter breaks the
document; a string path parameter alone cannot). Checks, and why:

- ``not_a_server_error``: no 5xx, whatever comes in.
- ``status_code_conformance``: every status is one the document declares (4XX/5XX for /v1).
- ``content_type_conformance`` and ``response_schema_conformance``: error bodies are the OpenAI
  error shape, ``/ready`` its status shape; success bodies are only loosely described (FastAPI's
  ``{}`` for the endpoints' objects), so this checks their content type but not their fields.
- ``negative_data_rejection``: input the document forbids is a 4xx, never accepted.
  ``positive_data_acceptance`` is not run: the document cannot state the cross-field rules
  (``tool_choice`` needs ``tools``, ``background`` needs ``store``, ...), so valid-looking
  input may rightly be a 400.

The examples are derandomized (the same ones every run, so CI does not flake) and generation
length is bounded so the run stays short: each create request asks for at most
``MAX_TOKENS`` tokens (larger token limits are lowered to it, a null or missing one is set). Runs
schemathesis through hypothesis's ``given`` per operation (its lazy pytest fixture does not work
with pytest 9).
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_schema_conformance, status_code_conformance)

pytestmark = pytest.mark.slow
EXAMPLES = 25
MAX_TOKENS = 4
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]
POSITIVE, NEGATIVE = [GenerationMode.POSITIVE], [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
OPERATIONS = {                                     # (method, path) → the modes it can be fuzzed in
    ("POST", "/v1/chat/completions"): NEGATIVE,
    ("POST", "/v1/responses"): NEGATIVE,
    ("GET", "/v1/responses/{response_id}"): NEGATIVE,
    ("DELETE", "/v1/responses/{response_id}"): POSITIVE,
    ("POST", "/v1/responses/{response_id}/cancel"): POSITIVE,
    ("GET", "/v1/responses/{response_id}/input_items"): NEGATIVE,
    ("GET", "/v1/models"): POSITIVE,
    ("GET", "/v1/models/{model_id}"): POSITIVE,
    ("GET", "/health"): POSITIVE,
    ("GET", "/ready"): POSITIVE,
}
TOKEN_LIMITS = {"/v1/chat/completions": ("max_tokens", "max_completion_tokens"),
                "/v1/responses": ("max_output_tokens",)}


@pytest.fixture(scope="module")
def root(stack):
    return stack.base_url.removesuffix("/v1")


@pytest.fixture(scope="module")
def schema(root):
    return schemathesis.openapi.from_url(f"{root}/openapi.json")


def test_every_operation_is_fuzzed(schema):
    found = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize("method,path,mode", [(m, p, mode) for (m, p), modes in OPERATIONS.items()
                                              for mode in modes])
def test_fuzz(schema, root, method, path, mode):
    statuses = []

    @given(case=schema[path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(case):
        bound_generation(case)
        statuses.append(case.call_and_validate(base_url=root, checks=CHECKS, timeout=300).status_code)

    run()
    if path in TOKEN_LIMITS and mode == GenerationMode.POSITIVE:
        assert any(s == 200 for s in statuses), statuses     # the fuzzer reached the model
    assert httpx.get(f"{root}/ready", timeout=10).status_code == 200     # still serving


def bound_generation(case) -> None:
    """At most ``MAX_TOKENS`` generated tokens for a create request (limits lowered, a null or
    missing one set)."""
    fields = TOKEN_LIMITS.get(case.path) if case.method.upper() == "POST" else None
    if not fields or not isinstance(case.body, dict):
        return
    for name in fields:
        value = case.body.get(name)
        if name in case.body and value is None:          # null means "no limit": the context's end
            case.body[name] = MAX_TOKENS
        elif isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
            case.body[name] = MAX_TOKENS
    if not any(name in case.body for name in fields):
        case.body[fields[0]] = MAX_TOKENS
