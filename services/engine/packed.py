"""bf16 linear weights packed once into oneDNN's blocked layout, for steps of few rows.

``F.linear`` on a plain bf16 weight has oneDNN reorder the weight into its blocked (AVX-512
bf16 / AMX) layout inside every call. At a decode step's few rows that reorder costs about as
much as the product: packed once (``torch.ops.mkldnn._reorder_linear_weight``, what Inductor's
CPU freezing does), SmolLM2's linears of a whole step ran 1.3–2.2× faster on a 2-core AMX CPU at
1–64 rows with the weights hot in cache, slower at 2048; a real decode step, whose weights stream
from memory, 1.02–1.24× (docs/benchmarks.md §8, "Packed bf16 weights").

Same bits: there the packed product gave exactly ``F.linear``'s result at every row count from 1 to
257 (not at 512, where oneDNN picks other kernels), so packed weights serve only steps of at most
``MAX_ROWS`` rows — and of at most ``max_num_seqs``, the most rows a decode step or a step's
logits have (``LlamaForCausalLM.pack_rows``; 64 by default, so longer prefill chunks take the
plain weights) — and ``same_bits`` checks this machine at those row counts before a model uses
them. The plain weights stay: for larger steps and for the embedding, to which SmolLM2 ties the
head. So a packed model costs its linear weights twice in memory (~270 MB more for SmolLM2-135M in
bf16); packing and the check take ~0.3 s of one thread when the engine loads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_ROWS = 256
CHECK_ROWS = (1, 2, 3, 8, 33, 64, MAX_ROWS)


def available(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether this torch can pack ``dtype`` weights on ``device`` (bf16 on a CPU with oneDNN)."""
    return (dtype == torch.bfloat16 and torch.device(device).type == "cpu"
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def pack(w: torch.Tensor) -> torch.Tensor:
    """``w: [out, in]`` bf16 as an opaque oneDNN tensor for ``matmul``."""
    return torch.ops.mkldnn._reorder_linear_weight(w)


def matmul(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` for a ``pack``-ed ``w``. (``model._linear`` makes the same call, scripted.)"""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, None, "none", [], "")


def same_bits(w: torch.Tensor, packed: torch.Tensor, rows: tuple[int, ...] = CHECK_ROWS) -> bool:
    """Whether ``matmul`` on ``packed`` gives exactly ``F.linear(x, w)`` at each of ``rows``."""
    gen = torch.Generator().manual_seed(0)
    for m in rows:
        x = torch.randn(m, w.shape[1], generator=gen).to(w.dtype)
        if not torch.equal(matmul(x, packed), F.linear(x, w)):
            return False
    return True
