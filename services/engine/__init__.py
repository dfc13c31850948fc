"""The model runtime both workers share: Llama model, paged KV cache, scheduler, sampler.

The names below load on first use, so that importing a light module of this package (the
tokenizer, the errors) does not import torch: the gateway needs only those.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"Completion": "engine", "LLMEngine": "engine", "EngineConfig": "config",
            "ModelConfig": "config", "InvalidRequestError": "errors", "RequestOutput": "sequence",
            "SamplingParams": "sequence"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
