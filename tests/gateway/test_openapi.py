"""/openapi.json says what the server does (gateway/openapi.py); the live fuzzing is in
tests/e2e/test_fuzz.py."""

from __future__ import annotations

import httpx
import jsonschema

from .responses_support import MODEL, create


def test_the_document_describes_errors_and_strict_bodies(base_url):
    doc = httpx.get(f"{base_url}/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            assert "422" not in op["responses"], (method, path)
            if path.startswith("/v1/"):
                assert {"4XX", "5XX"} <= set(op["responses"]), (method, path)
    for name in ("ChatCompletionRequest", "ResponseCreateRequest"):
        assert schemas[name]["additionalProperties"] is False
        assert schemas[name]["properties"]["model"]["enum"] == [MODEL]
    assert "text/event-stream" in doc["paths"]["/v1/responses"]["post"]["responses"]["200"]["content"]


def test_real_error_bodies_match_the_documented_error_schema(base_url, http):
    doc = httpx.get(f"{base_url}/openapi.json").json()
    error_schema = doc["components"]["schemas"]["ErrorBody"]
    for r in (create(http, temperature=9), create(http, bogus=1), http.get("/v1/responses/resp_nope"),
              http.post("/v1/chat/completions", content=b"{")):
        assert r.status_code in (400, 404)
        jsonschema.validate(r.json(), error_schema)


def test_a_string_input_is_documented_since_it_is_accepted(base_url, http):
    doc = httpx.get(f"{base_url}/openapi.json").json()
    input_schema = doc["components"]["schemas"]["ResponseCreateRequest"]["properties"]["input"]
    assert {"type": "string"} in input_schema["anyOf"]
    assert create(http, input="Hi").status_code == 200
