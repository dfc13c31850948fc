"""The gateway's configuration: one frozen dataclass, validated when built, never mutated."""

from __future__ import annotations

from dataclasses import dataclass, field

from .tools.mcp import McpSettings


@dataclass(frozen=True)
class GatewaySettings:
    """What an operator sets for the HTTP gateway (from ``TANDEM_*``, tandem/settings.py).

    ``served_model_name`` is the one ``model`` value requests may name (and what ``/v1/models``
    lists). ``full_text_enabled_default`` is the MindIE-style ``fullTextEnabled`` used when a request
    does not set it. ``request_timeout_s`` bounds a generation from arrival to its last token (and
    a followed stream's silence); ``ready_timeout_s`` bounds one readiness check of the backend;
    ``sse_keepalive_s`` is the keep-alive interval of every stream; ``max_body_bytes`` the largest
    request body (413 above it); ``max_input_items`` the most Chat ``messages`` or Responses
    ``input`` items one request may carry (400 above it). ``max_inflight_requests``,
    ``max_queued_requests`` and ``queue_timeout_s`` bound the generations this gateway runs and
    queues (admission.py). ``auth_ops``: /metrics and /status need an API key too
    (when keys are configured); ``debug_headers``: responses carry the ``x-tandem-*`` headers (where
    a request ran, KV moved); ``test_hooks``: the ``x-tandem-test-*`` request headers are honoured
    (else a request carrying one is a 400). ``mcp``: remote MCP tools (allowlist, deadlines, turns).
    How long stored responses live is the ``ResponseStore``'s.
    """

    served_model_name: str
    full_text_enabled_default: bool = False
    request_timeout_s: float = 600.0
    ready_timeout_s: float = 5.0
    sse_keepalive_s: float = 15.0
    max_body_bytes: int = 8 << 20
    max_input_items: int = 2048
    max_inflight_requests: int = 256
    max_queued_requests: int = 256
    queue_timeout_s: float = 30.0
    auth_ops: bool = True
    debug_headers: bool = False
    test_hooks: bool = False
    mcp: McpSettings = field(default_factory=McpSettings)

    def __post_init__(self) -> None:
        if not self.served_model_name:
            raise ValueError("served_model_name must be non-empty")
        for name in ("request_timeout_s", "ready_timeout_s", "sse_keepalive_s", "max_body_bytes",
                     "max_input_items", "max_inflight_requests", "queue_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_queued_requests < 0:
            raise ValueError(f"max_queued_requests must be >= 0, got {self.max_queued_requests}")
