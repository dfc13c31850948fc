"""What both APIs do with a request's parameters before it runs.

- ``check_model``: only the served model may be named (404 otherwise).
- ``sampling_params``: the sampling fields as the engine's ``SamplingParams`` (a refusal by its
  checks is a 400 naming the request's field).
- ``refuse_extra_fields``: request fields a model does not declare are refused by name, never
  ignored. Each request model keeps a table ``name -> neutral values`` of OpenAI fields this
  server does not implement. A neutral value (``n=1``, ``tools=[]``, ``null``) asks for nothing and
  is accepted; any other value is a 400 ``unsupported_parameter``; a field missing from the table
  is a 400 ``unknown_parameter``. Both name the field.
- ``JsonInt``: an integer field as JSON Schema counts integers (and the OpenAPI document says
  ``integer``): ``4`` or ``4.0``, never ``4.5``, ``"4"`` or ``true``.
- ``refuse_lone_surrogates``: JSON may escape half of a UTF-16 pair (``"\\ud800"``); such a
  string is not Unicode text, cannot be tokenized or stored, and is a 400 naming the field.
- ``check_items`` and ``check_context``: the input limits both APIs share (a list longer than the
  server's maximum; a prompt plus its token limit over the model's context), each a 400 naming the
  field, with the counts.
- ``corrupt_kv_requested``: the ``x-tandem-test-corrupt-kv`` test hook header. Test hooks are
  honoured only with ``TANDEM_TEST_HOOKS`` on; otherwise any ``x-tandem-test-*`` header is a 400
  naming it (refused, never silently ignored), as is an unknown one when they are on.
- ``debug_headers``: the ``x-tandem-*`` headers (worker ids, pids, KV moved) only with
  ``TANDEM_DEBUG_HEADERS`` on: nothing internal reaches a client by default.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, ClassVar, Mapping, Protocol

from fastapi import Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from services.engine import InvalidRequestError, SamplingParams

from .backend import TransferInfo
from .errors import APIError

CORRUPT_KV_HEADER = "x-tandem-test-corrupt-kv"
TEST_HOOK_PREFIX = "x-tandem-test-"
_SURROGATE = re.compile("[\ud800-\udfff]")


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_integral)]


class SamplingFields(Protocol):
    temperature: float | None
    top_p: float | None
    top_k: int | None
    seed: int | None
    ignore_eos: bool | None


def check_model(model: str, served_model_name: str) -> None:
    if model != served_model_name:
        raise APIError(404, f"The model `{model}` does not exist or you do not have access to it.",
                       param="model", code="model_not_found")


def sampling_params(body: SamplingFields, *, max_tokens: int | None, stop: tuple[str, ...] = (),
                    engine_params: Mapping[str, str]) -> SamplingParams:
    """OpenAI's defaults where a field is unset (temperature 1, top_p 1); ``engine_params`` maps
    engine field names onto the request's, for refusals."""
    sampling = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        seed=body.seed,
        stop=stop,
        ignore_eos=bool(body.ignore_eos),
    )
    try:
        sampling.validate()
    except InvalidRequestError as exc:
        raise APIError.from_engine(exc, engine_params) from None
    return sampling


def check_items(count: int, limit: int, param: str) -> None:
    """At most ``limit`` elements in the list ``param`` (OpenAI's wording and code)."""
    if count > limit:
        raise APIError.invalid(f"Invalid '{param}': array too long. Expected an array with maximum "
                               f"length {limit}, but got an array with length {count} instead.",
                               param, code="array_above_max_length")


def check_context(prompt_tokens: int, max_tokens: int | None, max_model_len: int, *,
                  prompt_param: str, tokens_param: str) -> None:
    """The prompt and its token limit (or one token to generate) fit the model's context."""
    check_token_limit(max_tokens, max_model_len, tokens_param)
    if prompt_tokens + (max_tokens or 1) > max_model_len:
        wanted = f" + {tokens_param} {max_tokens}" if max_tokens else " + 1 token to generate"
        raise APIError.invalid(f"The prompt has {prompt_tokens} tokens{wanted}, more than this "
                               f"model's context of {max_model_len} tokens allows.", prompt_param,
                               code="context_length_exceeded")


def check_token_limit(max_tokens: int | None, max_model_len: int, param: str) -> None:
    """A token limit leaves room for at least one prompt token."""
    if max_tokens is not None and max_tokens >= max_model_len:
        raise APIError.invalid(f"'{param}' is {max_tokens}; it must be less than this model's "
                               f"context of {max_model_len} tokens.", param)


def corrupt_kv_requested(request: Request, test_hooks: bool) -> bool:
    """The test hook header: ``1``/``true`` sets ``GenerateParams.test_corrupt_kv``; any test hook
    header while ``test_hooks`` is off (or an unknown one) is a 400 naming it."""
    for name in request.headers:
        if not name.startswith(TEST_HOOK_PREFIX):
            continue
        if not test_hooks:
            raise APIError.invalid(f"Header {name} is a test hook, and this server does not accept "
                                   "test hooks.", name, code="unsupported_parameter")
        if name != CORRUPT_KV_HEADER:
            raise APIError.invalid(f"Unknown test hook header: {name}", name, code="unknown_parameter")
    value = request.headers.get(CORRUPT_KV_HEADER, "0").strip().lower()
    if value not in ("0", "1", "true", "false"):
        raise APIError.invalid(f"Header {CORRUPT_KV_HEADER} must be 0 or 1.", CORRUPT_KV_HEADER)
    return value in ("1", "true")


def debug_headers(transfer: TransferInfo | None, enabled: bool) -> dict[str, str]:
    """Where a request ran and how much KV moved, only when debug headers are enabled."""
    return transfer.headers() if transfer is not None and enabled else {}


class OpenAIRequest(BaseModel):
    """A request body: strict types; fields it does not declare are refused by ``NOT_SUPPORTED``
    (its table of OpenAI fields with the values that ask for nothing)."""

    model_config = ConfigDict(extra="allow", strict=True)
    NOT_SUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {}

    @model_validator(mode="after")
    def _refuse_other_fields(self) -> "OpenAIRequest":
        refuse_extra_fields(self.model_extra, self.NOT_SUPPORTED)
        return self


def refuse_extra_fields(extra: dict[str, Any] | None, not_supported: dict[str, tuple[Any, ...]]) -> None:
    for name, value in (extra or {}).items():
        if name not in not_supported:
            raise PydanticCustomError("unknown_parameter", "Unrecognized request argument supplied: {param}",
                                      {"param": name})
        neutral = not_supported[name]
        if not _is_neutral(value, neutral):
            hint = f" (only {' or '.join(json.dumps(n) for n in neutral)} or null)" if neutral else ""
            raise PydanticCustomError("unsupported_parameter", "'{param}' is not supported by this server{hint}.",
                                      {"param": name, "hint": hint})


def _is_neutral(value: Any, neutral: tuple[Any, ...]) -> bool:
    return value is None or any(type(value) is type(n) and value == n for n in neutral)


def refuse_lone_surrogates(body: BaseModel) -> None:
    """A 400 naming the first field (``messages[0].content``) whose text has a lone surrogate."""
    bad = _surrogate_path(body.model_dump(by_alias=True, exclude_none=True), "")
    if bad is not None:
        raise APIError.invalid(f"Invalid value for '{bad}': the text contains a lone UTF-16 "
                               "surrogate (\\ud800-\\udfff), which is not valid Unicode.", bad)


def _surrogate_path(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return path or "body" if _SURROGATE.search(value) else None
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        if isinstance(key, str) and _SURROGATE.search(key):
            return f"{path}.{key.encode('unicode_escape').decode()}".lstrip(".")
        found = _surrogate_path(item, f"{path}[{key}]" if isinstance(key, int) else
                                f"{path}.{key}".lstrip("."))
        if found is not None:
            return found
    return None
