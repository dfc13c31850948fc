"""The gateway's configuration: one frozen dataclass, validated when built, never mutated."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GatewaySettings:
    """What an operator sets for the HTTP gateway.

    ``served_model_name`` is the one ``model`` value requests may name (and what ``/v1/models``
    lists). ``full_text_enabled_default`` is the MindIE-style ``fullTextEnabled`` used when a request
    does not set it. ``request_timeout_s`` bounds a generation from arrival to its last token;
    ``ready_timeout_s`` bounds one readiness check of the backend. How long stored responses live
    is the ``ResponseStore``'s ``ttl_seconds`` (``TANDEM_RESPONSE_TTL_SECONDS``).
    """

    served_model_name: str
    full_text_enabled_default: bool = False
    request_timeout_s: float = 600.0
    ready_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.served_model_name:
            raise ValueError("served_model_name must be non-empty")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if not self.ready_timeout_s > 0:
            raise ValueError(f"ready_timeout_s must be > 0, got {self.ready_timeout_s}")
