"""OpenAI-style errors: one exception type, and the handlers that turn every failure into its body.

Every error the gateway returns is ``{"error": {"message", "type", "param", "code"}}``:

| cause                                        | status | type                  | param          |
|----------------------------------------------|--------|-----------------------|----------------|
| malformed JSON (incl. bad UTF-8, too deep)   | 400    | invalid_request_error | null           |
| wrong type, out of range, lone surrogate     | 400    | invalid_request_error | the field      |
| unknown or unsupported field                 | 400    | invalid_request_error | the field      |
| the backend refuses the request              | 400    | invalid_request_error | its field      |
| missing or wrong API key (auth.py)           | 401    | invalid_request_error | null           |
| over a key's rate limit (ratelimit.py)       | 429    | invalid_request_error | null           |
| unknown model / unknown URL                  | 404    | invalid_request_error | model / null   |
| unknown, expired, deleted, other project's   | 404    | invalid_request_error | response_id    |
|   (named by previous_response_id)            | 404    | invalid_request_error | previous_resp… |
| a worker fails before the first token        | 502    | server_error          | null           |
| no worker can take it (BackendUnavailable)   | 503    | server_error          | null           |
| queue full (admission.py), worker at capacity | 503 + Retry-After | server_error | null          |
| the request was aborted by the system        | 503    | server_error          | null           |
| the response store (Redis) is unreachable    | 503    | server_error          | null           |
| a request body over TANDEM_MAX_BODY_BYTES    | 413    | invalid_request_error | null           |
| the request ran past its time limit          | 504    | server_error          | null           |
| anything unexpected (logged, no stack trace) | 500    | server_error          | null           |

FastAPI's default 422 is never returned: request validation errors become 400s here.

Nothing internal reaches a client: the 5xx messages are fixed sentences. A worker's error text,
gRPC details, Redis errors (which name ``host:port``), worker ids, pids and stack traces go to the
gateway's log under the request id (``x-request-id``) instead; the same holds for the ``error`` of
a ``response.failed`` event and of a stored failed response, which carry these messages.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.engine import InvalidRequestError

from .admission import Overloaded
from .backend import BackendUnavailable

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error with its HTTP status and OpenAI error fields; raise it anywhere in a handler."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    @classmethod
    def invalid(cls, message: str, param: str | None, code: str = "invalid_value") -> "APIError":
        return cls(400, message, param=param, code=code)

    @classmethod
    def from_engine(cls, exc: InvalidRequestError, params: Mapping[str, str] | None = None
                    ) -> "APIError":
        """A refusal as a 400; ``params`` renames engine fields to the request's (prompt → messages)."""
        return cls.invalid(exc.message, (params or {}).get(exc.field, exc.field))

    @classmethod
    def server(cls, status: int, message: str, code: str = "server_error") -> "APIError":
        return cls(status, message, type="server_error", code=code)

    @classmethod
    def unavailable(cls, exc: BackendUnavailable | None = None) -> "APIError":
        """No worker could take the request (why, with addresses, is for the logs only); an
        overload says when to come back."""
        if isinstance(exc, Overloaded):   # nothing reached a worker: the client may come back
            return cls(503, f"The server is overloaded; retry after {exc.retry_after_s} s.",
                       type="server_error", code="overloaded",
                       headers={"retry-after": str(exc.retry_after_s)})
        return cls.server(503, "No worker could take the request right now; try again later.",
                          code="backend_unavailable")

    @classmethod
    def worker_failed(cls) -> "APIError":
        """A worker failed running the request (its error text is for the logs only)."""
        return cls.server(502, "A worker failed while running the request.", code="worker_error")

    @classmethod
    def internal(cls) -> "APIError":
        return cls.server(500, "The server had an error while processing your request.")


def install_error_handlers(app: FastAPI) -> None:
    """Route every handled exception to an OpenAI-style body (the last-resort 500 is middleware's)."""

    async def on_api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    async def on_engine_refusal(_: Request, exc: InvalidRequestError) -> JSONResponse:
        return APIError.from_engine(exc).response()

    async def on_unavailable(request: Request, exc: BackendUnavailable) -> JSONResponse:
        log.warning("request req_%s: no worker could take it: %s", request.state.request_id, exc)
        return APIError.unavailable(exc).response()

    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc.errors()).response()

    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err = APIError(404, f"Invalid URL ({request.method} {request.url.path})", code="unknown_url")
        elif exc.status_code == 400:    # a body FastAPI could not decode (bad UTF-8, too deep)
            err = APIError.invalid("We could not parse the JSON body of your request. "
                                   f"({exc.detail})", None, code="invalid_json")
        elif exc.status_code == 405:
            err = APIError(405, f"Method {request.method} is not allowed on {request.url.path}",
                           code="method_not_allowed")
        else:
            err = APIError(exc.status_code, str(exc.detail))
        return err.response()

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(InvalidRequestError, on_engine_refusal)
    app.add_exception_handler(BackendUnavailable, on_unavailable)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


def validation_error(errors: list[dict[str, Any]]) -> APIError:
    """The first pydantic/FastAPI validation error as a 400 naming its field."""
    if not errors:
        return APIError.invalid("The request is invalid.", None)
    err = errors[0]
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    # ``param``: the whole name; ``member``: a field of the object at ``loc`` (nested validators)
    param = ctx.get("param") or param_name([*err.get("loc", ()), *([ctx["member"]] if "member" in ctx else [])])
    if kind == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", "")
        return APIError.invalid(f"We could not parse the JSON body of your request. ({detail})",
                                None, code="invalid_json")
    if not param and kind in ("missing", "model_attributes_type", "dict_type", "model_type"):
        return APIError.invalid("The request body must be a JSON object (content-type: "
                                "application/json).", None, code="invalid_type")
    if kind == "missing":
        return APIError.invalid(f"Missing required parameter: '{param}'.", param,
                                code="missing_required_parameter")
    if kind == "extra_forbidden":
        return APIError.invalid(f"Unrecognized request argument supplied: {param}", param,
                                code="unknown_parameter")
    if kind.startswith(("unknown_", "unsupported_", "invalid_")):   # our PydanticCustomErrors
        return APIError.invalid(err["msg"], param, code=kind)
    if not param:
        return APIError.invalid(f"The request body is invalid: {err.get('msg')}.", None,
                                code="invalid_type")
    code = "invalid_type" if kind.endswith(("_type", "_parsing")) else "invalid_value"
    return APIError.invalid(f"Invalid value for '{param}': {err.get('msg')}.", param, code=code)


UNION_TAG = "~"     # prefix of the tags of discriminated unions in request models


def param_name(loc: tuple | list) -> str | None:
    """``("body", "messages", 0, "content")`` → ``"messages[0].content"`` (OpenAI's spelling);
    ``("query", "limit")`` → ``"limit"``."""
    name = ""
    for part in loc:
        if part in ("body", "query", "path") and not name:
            continue
        if isinstance(part, str) and part.startswith(UNION_TAG):   # a union member, not a field
            continue
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or None
