"""A Llama-family decoder in plain torch: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Weights use Hugging Face names on load; Q/K/V and gate/up projections are fused into one matrix
each so a step does fewer, larger matmuls. ``forward`` takes a step's tokens flattened across
sequences and returns hidden states; ``logits`` is applied only to the rows that get sampled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionMetadata, paged_attention
from .config import ModelConfig
from .kv_cache import KVCache
from .quant import Int4Weight, Int8Weight, linear

LINEARS = ("qkv", "o", "gate_up", "down")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class Rotary(nn.Module):
    """Rotary embedding in the Hugging Face split-halves layout.

    ``cos`` and ``sin`` are cached per position with the sign of the rotated half folded into
    ``sin``; ``tables`` looks a step's positions up once for all layers, and ``apply`` rotates the
    query and key heads of a layer in one pass.
    """

    def __init__(self, config: ModelConfig, max_positions: int, dtype: torch.dtype):
        super().__init__()
        hd = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        sign = torch.cat([-torch.ones(hd // 2), torch.ones(hd // 2)])
        self.register_buffer("cos", emb.cos().to(dtype), persistent=False)
        self.register_buffer("sin", (emb.sin() * sign).to(dtype), persistent=False)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin: [T, 1, head_dim]`` for a step's positions."""
        return self.cos.index_select(0, positions)[:, None], self.sin.index_select(0, positions)[:, None]

    @staticmethod
    def apply(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        cos, sin = tables
        return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype):
        super().__init__()
        c = config
        e = lambda *shape: nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)  # noqa: E731
        self.input_norm = e(c.hidden_size)
        self.post_attn_norm = e(c.hidden_size)
        self.qkv = e(c.q_size + 2 * c.kv_size, c.hidden_size)
        self.o = e(c.hidden_size, c.q_size)
        self.gate_up = e(2 * c.intermediate_size, c.hidden_size)
        self.down = e(c.hidden_size, c.intermediate_size)
        self.config = c
        self.scale = c.head_dim ** -0.5

    def forward(self, x, rope: tuple[torch.Tensor, torch.Tensor], kv: tuple[torch.Tensor, torch.Tensor],
                meta: AttentionMetadata) -> torch.Tensor:
        c = self.config
        h = rms_norm(x, self.input_norm, c.rms_norm_eps)
        qk, v = linear(h, self.qkv).split([c.q_size + c.kv_size, c.kv_size], dim=-1)
        t = x.shape[0]
        qk = Rotary.apply(qk.view(t, c.num_heads + c.num_kv_heads, c.head_dim), rope)   # Q and K heads
        q, k = qk.split([c.num_heads, c.num_kv_heads], dim=1)
        attn = paged_attention(q, k, v.view(t, c.num_kv_heads, c.head_dim), *kv, meta, self.scale)
        x = x + linear(attn.reshape(t, c.q_size), self.o)
        h = rms_norm(x, self.post_attn_norm, c.rms_norm_eps)
        gate, up = linear(h, self.gate_up).chunk(2, dim=-1)
        return x + linear(F.silu(gate) * up, self.down)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, max_positions: int):
        super().__init__()
        self.config = config
        self.embed = nn.Parameter(torch.empty(config.vocab_size, config.hidden_size, dtype=dtype),
                                  requires_grad=False)
        self.layers = nn.ModuleList(DecoderLayer(config, dtype) for _ in range(config.num_layers))
        self.norm = nn.Parameter(torch.empty(config.hidden_size, dtype=dtype), requires_grad=False)
        self.lm_head = self.embed if config.tie_word_embeddings else nn.Parameter(
            torch.empty(config.vocab_size, config.hidden_size, dtype=dtype), requires_grad=False)
        self.rotary = Rotary(config, max_positions, dtype)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                meta: AttentionMetadata) -> torch.Tensor:
        x = F.embedding(input_ids, self.embed)
        rope = self.rotary.tables(positions)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, cache.layer(i), meta)
        return rms_norm(x, self.norm, self.config.rms_norm_eps)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return linear(hidden, self.lm_head).float()

    def quantize(self) -> None:
        """``weights="int4"``: layers' weights to ``Int4Weight``, the head to ``Int8Weight``
        (the embedding stays in the model dtype)."""
        for layer in self.layers:
            for name in LINEARS:
                w = getattr(layer, name)
                delattr(layer, name)
                setattr(layer, name, Int4Weight(w))
        head = self.lm_head
        delattr(self, "lm_head")
        self.lm_head = Int8Weight(head)

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy Hugging Face-named tensors in, fusing Q/K/V and gate/up; raise on anything missing."""
        def take(name: str) -> torch.Tensor:
            if name not in state:
                raise KeyError(f"checkpoint lacks {name}")
            return state[name]

        with torch.no_grad():
            self.embed.copy_(take("model.embed_tokens.weight"))
            self.norm.copy_(take("model.norm.weight"))
            if not self.config.tie_word_embeddings:
                self.lm_head.copy_(take("lm_head.weight"))
            for i, layer in enumerate(self.layers):
                p = f"model.layers.{i}."
                layer.input_norm.copy_(take(p + "input_layernorm.weight"))
                layer.post_attn_norm.copy_(take(p + "post_attention_layernorm.weight"))
                layer.qkv.copy_(torch.cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"]))
                layer.o.copy_(take(p + "self_attn.o_proj.weight"))
                layer.gate_up.copy_(torch.cat([take(p + "mlp.gate_proj.weight"),
                                               take(p + "mlp.up_proj.weight")]))
                layer.down.copy_(take(p + "mlp.down_proj.weight"))
