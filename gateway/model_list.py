"""GET /v1/models and /v1/models/{id}: the one served model, in OpenAI's list shape."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from .errors import APIError
from .state import GatewayState, gateway_state

router = APIRouter()


@router.get("/v1/models")
async def list_models(state: GatewayState = Depends(gateway_state)) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(state)]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, state: GatewayState = Depends(gateway_state)) -> dict[str, Any]:
    if model_id != state.settings.served_model_name:
        raise APIError(404, f"The model `{model_id}` does not exist.", param="model",
                       code="model_not_found")
    return _model_card(state)


def _model_card(state: GatewayState) -> dict[str, Any]:
    return {"id": state.settings.served_model_name, "object": "model", "created": state.started_at,
            "owned_by": "tandem"}
