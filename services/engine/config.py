"""Frozen configuration for the model and the engine.

``ModelConfig`` is read from a Hugging Face ``config.json``; ``EngineConfig`` is what an operator sets.
Derived values are properties; nothing is mutated after construction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# dtype name -> torch dtype attribute. ``DTYPES`` (name -> ``torch.dtype``) is built on first use so
# that the gateway, which reads ``ModelConfig`` from here, never imports torch.
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
               "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}

WEIGHTS = ("dense", "int4")

RMS_NORMS = ("reference", "fused")   # EngineConfig.rms_norm: model.rms_norm(fused=) is the second


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a Llama-family decoder."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_json(cls, path: Path) -> "ModelConfig":
        c = json.loads(Path(path).read_text())
        if c.get("rope_scaling"):
            raise ValueError(f"rope_scaling {c['rope_scaling']} is not supported yet")
        eos = c.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        rope_theta = c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        return cls(
            vocab_size=c["vocab_size"],
            hidden_size=c["hidden_size"],
            intermediate_size=c["intermediate_size"],
            num_layers=c["num_hidden_layers"],
            num_heads=c["num_attention_heads"],
            num_kv_heads=c.get("num_key_value_heads", c["num_attention_heads"]),
            head_dim=c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"],
            rope_theta=float(rope_theta),
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=c.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
            bos_token_id=c.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )


@dataclass(frozen=True)
class EngineConfig:
    """What an operator chooses for one engine instance.

    ``kv_cache_bytes`` bounds the paged KV cache; the number of blocks is derived from it and the model.
    ``max_model_len`` of 0 means the model's own context length. ``enable_prefix_caching`` keeps
    full KV blocks of finished requests findable by their tokens (``prefix_cache.py``).
    ``weights`` is ``"dense"`` (weights in ``dtype``) or ``"int4"`` (linear layers in 4-bit groups,
    ``quant.py``; computes in bfloat16, CPU only). Whether the CPU runs them natively is checked
    when the engine starts (``cpu.py``). ``script_decode`` runs decode-only steps through the
    TorchScript ``model.decode_layers`` (CPU; same results, less per-op overhead); off, every step
    runs the layers eagerly. ``rms_norm`` is ``"reference"`` (Hugging Face's op sequence, the one
    the batch-invariance tests pin) or ``"fused"`` (one layer-norm kernel; faster at small batches,
    different last bits: ``model.rms_norm``).
    """

    model: str = ""
    dtype: str = "float32"
    device: str = "cpu"
    block_size: int = 16
    kv_cache_bytes: int = 2 << 30
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int = 0
    num_threads: int = 0
    enable_prefix_caching: bool = True
    weights: str = "dense"
    script_decode: bool = True
    rms_norm: str = "reference"
    test_fail_step: bool = False   # test hook: every step that runs the model raises after scheduling

    def __post_init__(self):
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_NAMES)}, got {self.dtype!r}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {list(WEIGHTS)}, got {self.weights!r}")
        if self.weights == "int4" and (self.dtype not in ("bfloat16", "bf16") or self.device != "cpu"):
            raise ValueError("weights=int4 computes in bfloat16 on the CPU: set dtype=bfloat16, device=cpu")
        if self.rms_norm not in RMS_NORMS:
            raise ValueError(f"rms_norm must be one of {list(RMS_NORMS)}, got {self.rms_norm!r}")
        for name in ("block_size", "kv_cache_bytes", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_model_len < 0 or self.num_threads < 0:
            raise ValueError("max_model_len and num_threads must be >= 0")

    @property
    def fused_norm(self) -> bool:
        return self.rms_norm == "fused"

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, DTYPE_NAMES[self.dtype])


def __getattr__(name: str):
    if name == "DTYPES":
        import torch

        globals()["DTYPES"] = dtypes = {k: getattr(torch, v) for k, v in DTYPE_NAMES.items()}
        return dtypes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
