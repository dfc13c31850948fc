"""Low-bit weights for ``EngineConfig.weights="int4"``: 4-bit layers, an 8-bit head.

A weight ``[out, in]`` is cut into groups of 32 along ``in``; each group keeps 4-bit codes
``q ∈ 0..15`` and its own scale and minimum, ``w ≈ q · scale + min`` — the layout of GGUF's
Q4_1, so a model shipped as Q4_1 (SmolLM2's linear layers are) gets its own weights back, up to
the scales' rounding to bf16. The product runs in torch's CPU kernel
``_weight_int4pack_mm_for_cpu`` with bf16 activations: it reads a quarter of fp32's bytes, and a
row's result does not depend on the other rows in the batch (tested), so batch invariance holds.
Only where bf16 is native (``cpu.check``).

The output head (SmolLM2 ties it to the embedding, shipped as Q8_0) keeps 8 bits: per output row
one scale, ``torch._weight_int8pack_mm``, also batch invariant. In 4 bits it raised the perplexity
of the fixed text by 8% over fp32; in 8 bits by 0.1% (docs/benchmarks.md §8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import packed

GROUP = 32


class Int4Weight:
    """A linear weight in 4-bit groups; call it on ``x: [rows, in]`` (bf16) for ``[rows, out]``."""

    def __init__(self, w: torch.Tensor, group: int = GROUP):
        out, inp = w.shape
        if inp % group:
            raise ValueError(f"int4 weights need in_features divisible by {group}, got {inp}")
        wg = w.float().view(out, inp // group, group)
        lo, hi = wg.amin(-1), wg.amax(-1)
        scale = ((hi - lo) / 15).clamp(min=torch.finfo(torch.float32).tiny)
        codes = torch.round((wg - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
        self.packed = torch._convert_weight_to_int4pack_for_cpu(codes.view(out, inp), 1)
        # the kernel computes (q - 8) · scale + zero, so zero = min + 8 · scale
        self.scale_zeros = torch.stack([scale, lo + 8 * scale], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
        self.group = group
        self.shape = (out, inp)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int4pack_mm_for_cpu(x, self.packed, self.group, self.scale_zeros)

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight this stands for (for tests and quality checks)."""
        eye = torch.eye(self.shape[1], dtype=torch.bfloat16)
        return self(eye).float().T.contiguous()


class Int8Weight:
    """A linear weight as int8 with one scale per output row; call it on bf16 ``x: [rows, in]``."""

    def __init__(self, w: torch.Tensor):
        w = w.float()
        scale = (w.abs().amax(1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        self.codes = torch.round(w / scale[:, None]).to(torch.int8)
        self.scales = scale.to(torch.bfloat16)
        self.shape = tuple(w.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x, self.codes, self.scales)


def linear(x: torch.Tensor, w: torch.Tensor | Int4Weight | Int8Weight) -> torch.Tensor:
    """``x @ w.T`` for a dense tensor (plain, or oneDNN-packed: ``packed.py``) or a low-bit weight
    (whose kernels need ``x`` contiguous)."""
    if not isinstance(w, torch.Tensor):
        return w(x.contiguous())
    return packed.matmul(x, w) if w.is_mkldnn else F.linear(x, w)
