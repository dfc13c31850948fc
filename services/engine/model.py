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


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class Rotary(nn.Module):
    """Rotary embedding in the Hugging Face split-halves layout, cos/sin cached per position."""

    def __init__(self, config: ModelConfig, max_positions: int, dtype: torch.dtype):
        super().__init__()
        hd = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos().to(dtype), persistent=False)
        self.register_buffer("sin", emb.sin().to(dtype), persistent=False)

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        cos, sin = self.cos[positions][:, None, :], self.sin[positions][:, None, :]
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


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

    def forward(self, x, positions, rotary: Rotary, kv: tuple[torch.Tensor, torch.Tensor],
                meta: AttentionMetadata) -> torch.Tensor:
        c = self.config
        h = rms_norm(x, self.input_norm, c.rms_norm_eps)
        q, k, v = F.linear(h, self.qkv).split([c.q_size, c.kv_size, c.kv_size], dim=-1)
        t = x.shape[0]
        q = rotary(positions, q.view(t, c.num_heads, c.head_dim))
        k = rotary(positions, k.view(t, c.num_kv_heads, c.head_dim))
        attn = paged_attention(q, k, v.view(t, c.num_kv_heads, c.head_dim), *kv, meta, self.scale)
        x = x + F.linear(attn.reshape(t, c.q_size), self.o)
        h = rms_norm(x, self.post_attn_norm, c.rms_norm_eps)
        gate, up = F.linear(h, self.gate_up).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, self.down)


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
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, self.rotary, cache.layer(i), meta)
        return rms_norm(x, self.norm, self.config.rms_norm_eps)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.lm_head).float()

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
