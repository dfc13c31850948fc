"""Rate limits per API key, counted in Redis so that every gateway replica shares them.

Rules:
- Two fixed one-minute windows per key (the ``limits`` library, Redis storage): requests per
  minute and tokens per minute. A key's own ``requests_per_minute`` / ``tokens_per_minute``
  (gateway/auth.py) win over the defaults (``TANDEM_RATE_LIMIT_*``; 0: no limit). With no keys
  configured the defaults apply to all callers together.
- Every ``/v1/`` request counts one request up front. Tokens (prompt + completion) are counted
  when a generation ends (``charge_tokens``, called by the metered backend); a request is refused
  while the key's token window is spent. So a window may overshoot by the requests in flight.
- Over a limit: 429 ``rate_limit_exceeded`` with ``Retry-After`` (seconds to the window's end)
  and OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers, which every
  ``/v1/`` answer carries when a limit applies.
- Redis unreachable or hung: 503 ``store_unavailable``, never an unlimited pass — for the keys a
  limit applies to (fail closed: a limit Tandem cannot count is not lifted). A key with no limit
  (the default: ``TANDEM_RATE_LIMIT_*`` 0) never touches Redis, so while Redis is down its
  unstored requests are served (docs/architecture.md, "Redis down"). Every call is bounded by
  ``timeout_s`` (``TANDEM_REDIS_TIMEOUT_S``) socket timeouts.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from typing import Callable

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import OPEN_KEY, ApiKey
from .errors import APIError

log = logging.getLogger(__name__)

# Set per request by the middleware; the metered backend charges a finished generation's tokens.
_CHARGE: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar(
    "tandem_charge_tokens", default=None)


def charge_tokens(tokens: int) -> None:
    """Count ``tokens`` against the current request's key (no-op outside a limited request)."""
    charge = _CHARGE.get()
    if charge is not None and tokens > 0:
        charge(tokens)


class RateLimits:
    """The per-key request and token windows in the Redis at ``redis_url``."""

    def __init__(self, redis_url: str, requests_per_minute: int = 0, tokens_per_minute: int = 0,
                 namespace: str = "tandem", timeout_s: float = 2.0):
        storage = RedisStorage(f"async+{redis_url}", implementation="redispy",
                               key_prefix=f"{namespace}:ratelimit", wrap_exceptions=True,
                               socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._limiter = FixedWindowRateLimiter(storage)
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._tasks: set[asyncio.Task] = set()

    def limits_of(self, key: ApiKey) -> tuple[int, int]:
        return (key.requests_per_minute or self.requests_per_minute,
                key.tokens_per_minute or self.tokens_per_minute)

    async def admit(self, key: ApiKey) -> dict[str, str]:
        """Count one request; its ``x-ratelimit-*`` headers, or a 429 ``APIError`` carrying them."""
        rpm, tpm = self.limits_of(key)
        who, headers, refused = key.sha256[:32], {}, None
        if rpm:
            ok = await self._limiter.hit(RateLimitItemPerMinute(rpm), who, "requests")
            wait = await self._window(headers, "requests", rpm, who)
            refused = wait if not ok else None
        if tpm and refused is None:
            ok = await self._limiter.test(RateLimitItemPerMinute(tpm), who, "tokens")
            wait = await self._window(headers, "tokens", tpm, who)
            refused = wait if not ok else None
        if refused is not None:
            raise APIError(429, f"Rate limit reached for this API key; try again in {refused} s.",
                           code="rate_limit_exceeded", headers={**headers, "retry-after": str(refused)})
        return headers

    async def _window(self, headers: dict[str, str], kind: str, limit: int, who: str) -> int:
        """Add one window's headers; returns the seconds until it resets."""
        stats = await self._limiter.get_window_stats(RateLimitItemPerMinute(limit), who, kind)
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        headers.update({f"x-ratelimit-limit-{kind}": str(limit),
                        f"x-ratelimit-remaining-{kind}": str(max(0, stats.remaining)),
                        f"x-ratelimit-reset-{kind}": f"{wait}s"})
        return wait

    def charger(self, key: ApiKey) -> Callable[[int], None] | None:
        _, tpm = self.limits_of(key)
        if not tpm:
            return None

        def charge(tokens: int) -> None:
            task = asyncio.ensure_future(self._charge(key, tpm, tokens))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return charge

    async def _charge(self, key: ApiKey, tpm: int, tokens: int) -> None:
        try:
            await self._limiter.hit(RateLimitItemPerMinute(tpm), key.sha256[:32], "tokens", cost=tokens)
        except StorageError as exc:
            log.warning("could not count %d tokens against a key: %s", tokens, type(exc).__name__)


class RateLimitMiddleware:
    """Admit or refuse each ``/v1/`` request by its key's windows (pure ASGI; inside auth)."""

    def __init__(self, app: ASGIApp, limits: RateLimits | None):
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.limits is None or scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        key = scope.get("state", {}).get("api_key", OPEN_KEY)
        try:
            headers = await self.limits.admit(key)
        except APIError as err:
            await err.response()(scope, receive, send)
            return
        except StorageError as exc:
            err = APIError.server(503, f"The rate limiter's Redis is unavailable "
                                       f"({type(exc).__name__}).", code="store_unavailable")
            await err.response()(scope, receive, send)
            return
        extra = [(k.encode(), v.encode()) for k, v in headers.items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        token = _CHARGE.set(self.limits.charger(key))
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            _CHARGE.reset(token)
