"""What the engine's model costs per step (FLOPs, bytes) and a measurement with its roofline columns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from services.engine.config import DTYPES, ModelConfig
from services.engine.kv_cache import kv_bytes_per_token


@dataclass
class CostModel:
    """FLOPs and bytes of one forward of the engine's model (SmolLM2-shaped Llama).

    * ``layer_matmul_params`` = L · (h·(q + 2·kv) + q·h + 3·h·i)  (fused qkv, o, gate_up, down)
    * ``head_params`` = V · h (the lm_head; applied only to rows that are sampled)
    * attention FLOPs for one query row attending to ``c`` cached tokens = 4 · L · H · d · c
      (Q·Kᵀ and P·V, 2 FLOPs per multiply-add each); a causal prompt of n tokens sums c = 1..n.
    """

    layer_matmul_params: int
    head_params: int
    attn_flops_per_ctx: int
    weight_bytes: int          # every parameter once (tied embedding/lm_head counted once)
    kv_bytes_per_token: int

    @classmethod
    def of(cls, mc: ModelConfig, model: torch.nn.Module, dtype: torch.dtype) -> "CostModel":
        per_layer = (mc.hidden_size * (mc.q_size + 2 * mc.kv_size) + mc.q_size * mc.hidden_size
                     + 3 * mc.hidden_size * mc.intermediate_size)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        return cls(layer_matmul_params=mc.num_layers * per_layer,
                   head_params=mc.vocab_size * mc.hidden_size,
                   attn_flops_per_ctx=4 * mc.num_layers * mc.num_heads * mc.head_dim,
                   weight_bytes=weight_bytes,
                   kv_bytes_per_token=kv_bytes_per_token(mc, dtype))

    def decode_step_flops(self, batch: int, mean_ctx: float) -> float:
        return batch * (2 * (self.layer_matmul_params + self.head_params)
                        + self.attn_flops_per_ctx * mean_ctx)

    def decode_step_bytes(self, batch: int, mean_ctx: float) -> float:
        """Every weight read once per step + each sequence's KV read once (activations ignored)."""
        return self.weight_bytes + batch * mean_ctx * self.kv_bytes_per_token

    def prefill_flops(self, num_prompts: int, length: int) -> float:
        return num_prompts * (2 * self.layer_matmul_params * length + 2 * self.head_params
                              + self.attn_flops_per_ctx * length * (length + 1) / 2)


def apply_rooflines(r: "Result", peak_flops: float, bw: float) -> None:
    """Fill the roofline columns of ``r`` from its FLOPs/bytes and the machine's limits."""
    tokens = r.batch if r.kind == "decode" else r.batch * r.extra["prompt_len"]
    r.achieved_gflops = r.flops / r.seconds / 1e9
    r.compute_roofline_tok_s = tokens * peak_flops / r.flops
    r.pct_compute = 100 * r.tokens_per_s / r.compute_roofline_tok_s
    if r.bytes:
        r.bandwidth_roofline_tok_s = tokens * bw / r.bytes
        r.pct_bandwidth = 100 * r.tokens_per_s / r.bandwidth_roofline_tok_s


def apply_limits(results: list["Result"], peaks: dict[str, float], bw: float) -> None:
    """Achieved GFLOP/s of every result, and its roofline columns when the peaks are known."""
    for r in results:
        if r.flops and r.seconds:
            r.achieved_gflops = r.flops / r.seconds / 1e9
    if peaks:
        for r in results:
            if r.flops:
                name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}.get(DTYPES[r.dtype], "")
                apply_rooflines(r, peaks.get(name, float("nan")), bw)


@dataclass
class Result:
    dtype: str
    kind: str                    # "decode" or "prefill"
    batch: int
    tokens_per_s: float          # decode: B / median steady step; prefill: prompt tokens / best time
    ms_per_step: float           # decode: median step; prefill: the whole prefill (best of reps)
    ms_per_step_p90: float = 0.0
    mean_tokens_per_s: float = 0.0  # decode: all timed tokens / all timed seconds (hurt by outliers)
    other_cores: float = 0.0     # CPU cores other processes kept busy meanwhile (contention)
    probe_gflops: float = 0.0    # speed_probe() right before this measurement
    steps: int = 0
    mean_ctx: float = 0.0
    e2e_tokens_per_s: float = 0.0  # decode run incl. prefill and warm-up: B·max_tokens / wall time
    flops: float = 0.0           # decode: per step; prefill: the whole prefill
    bytes: float = 0.0           # decode: per step (weights + KV read)
    seconds: float = 0.0         # the time ``flops`` took (median step / best prefill)
    achieved_gflops: float = 0.0
    compute_roofline_tok_s: float = 0.0
    bandwidth_roofline_tok_s: float = 0.0
    pct_compute: float = 0.0
    pct_bandwidth: float = 0.0
    hf_tokens_per_s: float | None = None      # transformers: B / median decode step (see hf_run)
    hf_ms_per_step: float | None = None
    hf_mean_tokens_per_s: float | None = None
    hf_e2e_tokens_per_s: float | None = None  # transformers whole generate() rate
    hf_other_cores: float | None = None
    hf_probe_gflops: float | None = None
    hf_match: str | None = None               # greedy tokens identical to transformers' output
    extra: dict = field(default_factory=dict)
