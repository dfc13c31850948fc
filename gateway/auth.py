"""API keys: who may call the gateway, and which project each caller acts for.

Rules:
- Keys come from ``TANDEM_API_KEYS`` (``key=project`` pairs, comma-separated; the project may be
  left out: ``default``) and/or ``TANDEM_API_KEYS_FILE``, a JSON file that holds only sha256
  digests::

      {"keys": [{"sha256": "<hex of sha256(key)>", "project": "team-a", "name": "ci",
                 "requests_per_minute": 60, "tokens_per_minute": 100000}]}

  ``name`` and the two limits are optional (limits fall back to ``TANDEM_RATE_LIMIT_*``).
  The file is re-read when its mtime or size changes (checked at most once a second), so keys are
  added and revoked by editing it, without a restart. A file that does not parse holds no keys
  (fail closed) and is logged; one that does not exist at start is an error.
- Keys are kept only as sha256 digests; a presented key is hashed and looked up (a dict lookup on
  a digest: no timing signal about the stored keys).
- No key configured at all: the gateway is open and every caller is project ``default``.
- ``AuthMiddleware`` checks ``Authorization: Bearer <key>`` on every path except ``/health`` and
  ``/ready`` (and ``/metrics``, ``/status`` when ``TANDEM_AUTH_OPS`` is false). Missing or wrong
  key: 401 with an OpenAI-style body. The caller's ``ApiKey`` is ``request.state.api_key``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import APIError

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "default"
ALWAYS_OPEN = frozenset({"/health", "/ready"})
OPS_PATHS = frozenset({"/metrics", "/status"})
RELOAD_CHECK_S = 1.0


@dataclass(frozen=True)
class ApiKey:
    """One key as the gateway holds it: its digest, project, and per-key limits (None: default)."""

    sha256: str
    project: str = DEFAULT_PROJECT
    name: str = ""
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if not self.project:
            raise ValueError("project must be non-empty")
        for limit in (self.requests_per_minute, self.tokens_per_minute):
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
                raise ValueError(f"a rate limit must be an int >= 1, got {limit!r}")


OPEN_KEY = ApiKey(hashlib.sha256(b"").hexdigest())   # the caller when no keys are configured


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_env_keys(value: str) -> tuple[ApiKey, ...]:
    """``key=project,key2`` → keys (held hashed); an empty key is a ValueError."""
    keys = []
    for entry in filter(None, (e.strip() for e in value.split(","))):
        key, _, project = entry.partition("=")
        if not key.strip():
            raise ValueError("TANDEM_API_KEYS: an entry has an empty key")
        keys.append(ApiKey(digest(key.strip()), project.strip() or DEFAULT_PROJECT))
    return tuple(keys)


def parse_key_file(text: str) -> tuple[ApiKey, ...]:
    entries = json.loads(text)["keys"]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError("'keys' must be a list of objects")
    return tuple(ApiKey(**e) for e in entries)


class KeyRing:
    """The configured keys: from the environment (fixed) and a file (re-read on change)."""

    def __init__(self, env_keys: tuple[ApiKey, ...] = (), path: Path | None = None):
        self._env = {k.sha256: k for k in env_keys}
        self._path = path
        self._file: dict[str, ApiKey] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        if path is not None:
            os.stat(path)          # a missing file at start is the operator's error
            self._reload()

    @property
    def open(self) -> bool:
        """No key is configured (and no key file): every caller is let in."""
        return not self._env and self._path is None

    def lookup(self, key: str) -> ApiKey | None:
        now = time.monotonic()
        if self._path is not None and now - self._checked >= RELOAD_CHECK_S:
            self._checked = now
            self._reload()
        found = digest(key)
        return self._env.get(found) or self._file.get(found)

    def _reload(self) -> None:
        try:
            st = os.stat(self._path)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            self._stamp = stamp
            self._file = {k.sha256: k for k in parse_key_file(self._path.read_text())}
            log.info("API keys: %d from %s", len(self._file), self._path)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            self._file = {}
            log.error("API key file %s unusable (%s): no keys from it until it is fixed",
                      self._path, type(exc).__name__)


def api_key(request: Request) -> ApiKey:
    """The caller's key (``OPEN_KEY`` when the gateway is open)."""
    return getattr(request.state, "api_key", OPEN_KEY)


def project(request: Request) -> str:
    """The project the caller acts for: the owner of what it stores, the only one it may read."""
    return api_key(request).project


class AuthMiddleware:
    """``Authorization: Bearer`` on every path but the open ones; 401 otherwise (pure ASGI)."""

    def __init__(self, app: ASGIApp, keys: KeyRing, *, auth_ops: bool = True):
        self.app = app
        self.keys = keys
        self.open_paths = ALWAYS_OPEN if auth_ops else ALWAYS_OPEN | OPS_PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.keys.open or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        key, err = self._caller(scope)
        if err is not None:
            await err.response()(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, send)

    def _caller(self, scope: Scope) -> tuple[ApiKey | None, APIError | None]:
        header = dict(scope.get("headers") or ()).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, unauthorized("You didn't provide an API key. You need to provide your API "
                                      "key in an Authorization header using Bearer auth (i.e. "
                                      "Authorization: Bearer YOUR_KEY).", None)
        key = self.keys.lookup(token.strip())
        if key is None:
            return None, unauthorized(f"Incorrect API key provided: {_masked(token.strip())}.",
                                      "invalid_api_key")
        return key, None


def unauthorized(message: str, code: str | None) -> APIError:
    return APIError(401, message, code=code, headers={"www-authenticate": "Bearer"})


def _masked(key: str) -> str:
    return f"{key[:3]}***{key[-4:]}" if len(key) > 10 else "***"
