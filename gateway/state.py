"""What every route may read: the backend and the settings the app was built with (read-only)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request

from .backend import Backend
from .config import GatewaySettings


@dataclass(frozen=True)
class GatewayState:
    backend: Backend
    settings: GatewaySettings
    started_at: int = field(default_factory=lambda: int(time.time()))


def gateway_state(request: Request) -> GatewayState:
    """FastAPI dependency: the app's ``GatewayState`` (set once by ``create_app``)."""
    return request.app.state.gateway
