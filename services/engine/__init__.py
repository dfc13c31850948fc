"""The model runtime both workers share: Llama model, paged KV cache, scheduler, sampler."""

from .config import EngineConfig, ModelConfig
from .engine import Completion, LLMEngine
from .errors import InvalidRequestError
from .sequence import RequestOutput, SamplingParams

__all__ = ["Completion", "EngineConfig", "InvalidRequestError", "LLMEngine", "ModelConfig",
           "RequestOutput", "SamplingParams"]
