"""A Llama-family decoder in plain torch: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Weights use Hugging Face names on load; Q/K/V and gate/up projections are fused into one matrix
each so a step does fewer, larger matmuls. ``forward`` takes a step's tokens flattened across
sequences and returns hidden states; ``logits`` is applied only to the rows that get sampled.

A step that only decodes (the common step of a decode worker; its rows in one or more attention
groups of similar context) runs all layers in one TorchScript function (``decode_layers``): the
same ops in the same order as the layers' ``forward`` (bit-identical results, tested), without the
Python interpreter between them. At one row that cut the step's forward by about a fifth on a
2-core CPU (docs/benchmarks.md §8). Steps with prefill chunks run the layers eagerly.
"""

from __future__ import annotations

import logging
import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import packed as onednn
from .attention import AttentionMetadata, decode_attention, paged_attention
from .config import ModelConfig
from .kv_cache import KVCache
from .quant import Int4Weight, Int8Weight, linear

LINEARS = ("qkv", "o", "gate_up", "down")
log = logging.getLogger(__name__)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, fused: bool = False) -> torch.Tensor:
    """``weight · x / sqrt(mean(x²) + eps)`` over the last dim, in fp32, rounded to ``x``'s dtype
    before the weight is applied (as Hugging Face's Llama does).

    ``fused`` False (``EngineConfig.rms_norm="reference"``): Hugging Face's sequence of small ops.
    ``fused`` True: one ``layer_norm`` kernel over ``[x, -x]``, whose mean is 0, so its variance is
    ``mean(x²)`` and its first half is the RMSNorm — 4 kernels instead of 7–9 (a one-row decode
    step runs 61 norms), the same maths with different last bits (docs/engine.md, "RMSNorm")."""
    if fused:
        n = x.shape[-1]
        return weight * F.layer_norm(torch.cat([x, -x], -1), [2 * n], None, None, eps).narrow(-1, 0, n)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class Rotary(nn.Module):
    """Rotary embedding in the Hugging Face split-halves layout.

    ``cos`` and ``sin`` are cached per position with the sign of the rotated half folded into
    ``sin``; ``tables`` looks a step's positions up once for all layers, and ``rotate`` turns the
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


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


def linear_args(w: torch.Tensor | Int4Weight) -> tuple[torch.Tensor, Optional[torch.Tensor], int]:
    """A layer's linear as ``_linear``'s arguments: a dense weight, or an ``Int4Weight``'s packed
    codes with its scales and group size."""
    if isinstance(w, Int4Weight):
        return w.packed, w.scale_zeros, w.group
    return w, None, 0


def _linear(x: torch.Tensor, w: torch.Tensor, scale_zeros: Optional[torch.Tensor], group: int) -> torch.Tensor:
    """``x @ w.T`` for a dense ``w`` (``scale_zeros`` None; plain, or oneDNN-packed: ``packed.py``)
    or int4 packed codes (``linear_args``)."""
    if scale_zeros is None:
        if w.is_mkldnn:
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), w, None, "none", [], "")
        return F.linear(x, w)
    return torch._weight_int4pack_mm_for_cpu(x.contiguous(), w, group, scale_zeros)


def attention_inputs(x: torch.Tensor, norm: torch.Tensor, w: torch.Tensor, scale_zeros: Optional[torch.Tensor],
                     group: int, eps: float, cos: torch.Tensor, sin: torch.Tensor, num_heads: int,
                     num_kv_heads: int, head_dim: int,
                     fused_norm: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A layer's first half: RMSNorm, the fused QKV projection and rotary; ``q, k, v`` by heads."""
    t = x.shape[0]
    kv_size = num_kv_heads * head_dim
    qk, v = _linear(rms_norm(x, norm, eps, fused_norm), w, scale_zeros, group).split(
        [num_heads * head_dim + kv_size, kv_size], dim=-1)
    qk = rotate(qk.view(t, num_heads + num_kv_heads, head_dim), cos, sin)    # Q and K heads in one pass
    q, k = qk.split([num_heads, num_kv_heads], dim=1)
    return q, k, v.view(t, num_kv_heads, head_dim)


def layer_output(x: torch.Tensor, attn: torch.Tensor, o: torch.Tensor, o_sz: Optional[torch.Tensor], o_group: int,
                 norm: torch.Tensor, gate_up: torch.Tensor, gate_up_sz: Optional[torch.Tensor], gate_up_group: int,
                 down: torch.Tensor, down_sz: Optional[torch.Tensor], down_group: int, eps: float,
                 fused_norm: bool) -> torch.Tensor:
    """A layer's second half: output projection and residual, RMSNorm, SwiGLU and residual."""
    x = x + _linear(attn.reshape(x.shape[0], -1), o, o_sz, o_group)
    gate, up = _linear(rms_norm(x, norm, eps, fused_norm), gate_up, gate_up_sz, gate_up_group).chunk(2, dim=-1)
    return x + _linear(F.silu(gate) * up, down, down_sz, down_group)


def decode_layers(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: torch.Tensor,
                  slots: torch.Tensor, bounds: List[int], blocks: List[torch.Tensor],
                  masks: List[Optional[torch.Tensor]], norms: List[torch.Tensor], weights: List[torch.Tensor],
                  scale_zeros: List[Optional[torch.Tensor]], groups: List[int], eps: float, num_heads: int,
                  num_kv_heads: int, head_dim: int, block_size: int, scale: float,
                  fused_norm: bool) -> torch.Tensor:
    """Every layer's ``DecoderLayer.forward`` for a step of decode tokens only: ``x: [T, hidden]``,
    ``kv`` the whole ``KVCache.kv``; attention group ``g`` (``DecodeGroup``) is rows
    ``bounds[g]:bounds[g + 1]`` with ``blocks[g]`` and ``masks[g]``; per layer ``norms`` holds the
    two norm weights and ``weights``/``scale_zeros``/``groups`` the four linears (``LINEARS``
    order, ``linear_args``). The same ops as ``paged_attention``'s decode groups. Scripted."""
    for i in range(kv.shape[0]):
        j = 4 * i
        k_cache, v_cache = kv[i, 0], kv[i, 1]
        q, k, v = attention_inputs(x, norms[2 * i], weights[j], scale_zeros[j], groups[j], eps, cos, sin,
                                   num_heads, num_kv_heads, head_dim, fused_norm)
        k_cache.index_copy_(0, slots, k)
        v_cache.index_copy_(0, slots, v)
        if len(blocks) == 1:
            attn = decode_attention(q, k_cache, v_cache, blocks[0], masks[0], block_size, scale)
        else:
            attn = torch.empty_like(q)
            for g in range(len(blocks)):
                a, b = bounds[g], bounds[g + 1]
                attn[a:b] = decode_attention(q[a:b], k_cache, v_cache, blocks[g], masks[g], block_size, scale)
        x = layer_output(x, attn, weights[j + 1], scale_zeros[j + 1], groups[j + 1], norms[2 * i + 1],
                         weights[j + 2], scale_zeros[j + 2], groups[j + 2],
                         weights[j + 3], scale_zeros[j + 3], groups[j + 3], eps, fused_norm)
    return x


_scripted_decode_layers = None


def scripted_decode_layers():
    """``decode_layers`` compiled by TorchScript once per process (None if that fails: eager then).

    torch marks ``torch.jit.script`` deprecated (its warning is silenced here) but 2.13, the version
    this project pins, runs it; a torch without it lands in the eager fallback, logged once."""
    global _scripted_decode_layers
    if _scripted_decode_layers is None:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
                _scripted_decode_layers = torch.jit.script(decode_layers)
        except Exception:   # an unsupported torch build: the eager layers still work
            log.exception("TorchScript could not compile the decode step; decoding eagerly")
            _scripted_decode_layers = False
    return _scripted_decode_layers or None


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
                meta: AttentionMetadata, fused_norm: bool = False, linears: list | None = None) -> torch.Tensor:
        """``linears``: the four linears' ``linear_args`` to use instead of this layer's own
        (``LlamaForCausalLM``'s packed ones)."""
        c = self.config
        qkv, o, gate_up, down = linears or [linear_args(getattr(self, name)) for name in LINEARS]
        q, k, v = attention_inputs(x, self.input_norm, *qkv, c.rms_norm_eps, *rope, c.num_heads, c.num_kv_heads,
                                   c.head_dim, fused_norm)
        attn = paged_attention(q, k, v, *kv, meta, self.scale)
        return layer_output(x, attn, *o, self.post_attn_norm, *gate_up, *down, c.rms_norm_eps, fused_norm)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, max_positions: int, script_decode: bool = True,
                 fused_norm: bool = False, pack_rows: int = 0):
        super().__init__()
        self.config = config
        self.fused_norm = fused_norm   # ``rms_norm(fused=)`` for every norm, eager and scripted alike
        self.script_decode = script_decode   # run decode-only steps through ``decode_layers`` (CPU)
        # steps of at most this many rows use dense bf16 weights packed for oneDNN (packed.py;
        # same bits; ``pack`` builds them, the engine calls it when it loads); 0: never
        self.pack_rows = pack_rows
        self._packed: tuple[list, object] | None = None   # (per layer the 4 linear_args, head)
        self._decode_args: dict[bool, tuple] = {}   # scripted step's weight arguments, by packed
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
        packed = self._packed_weights(x.shape[0])
        groups = meta.decode_groups if not meta.prefills else ()
        scripted = self._scripted(cache) if groups else None
        if scripted is not None:
            c = self.config
            bounds = [g.start for g in groups] + [groups[-1].end]
            x = scripted(x, rope[0], rope[1], cache.kv, meta.slot_mapping, bounds, [g.blocks for g in groups],
                         [g.mask for g in groups], *self._scripted_args(packed), c.rms_norm_eps, c.num_heads,
                         c.num_kv_heads, c.head_dim, meta.block_size, self.layers[0].scale, self.fused_norm)
        else:
            for i, layer in enumerate(self.layers):
                x = layer(x, rope, cache.layer(i), meta, self.fused_norm, packed[0][i] if packed else None)
        return rms_norm(x, self.norm, self.config.rms_norm_eps, self.fused_norm)

    def _scripted(self, cache: KVCache):
        """The scripted decode step, when this model can take it (CPU)."""
        if not self.script_decode or cache.kv.device.type != "cpu":
            return None
        return scripted_decode_layers()

    def _scripted_args(self, packed: tuple[list, object] | None) -> tuple:
        """``decode_layers``' norm and weight arguments, with the packed linears or the plain ones."""
        key = packed is not None
        if key not in self._decode_args:
            layers = packed[0] if packed else [[linear_args(getattr(layer, name)) for name in LINEARS]
                                               for layer in self.layers]
            args = [a for linears in layers for a in linears]
            norms = [t for layer in self.layers for t in (layer.input_norm, layer.post_attn_norm)]
            self._decode_args[key] = (norms, *(list(a) for a in zip(*args)))
        return self._decode_args[key]

    def _packed_weights(self, rows: int) -> tuple[list, object] | None:
        """The packed linears (per layer ``linear_args``) and head for a step of ``rows`` rows, or
        None: plain weights (more rows than ``pack_rows``, weights that are not dense bf16, or a
        machine where packing would change the bits; packed.py)."""
        return self.pack() if 0 < rows <= self.pack_rows else None

    def pack(self) -> tuple[list, object] | None:
        """Build the packed weights now if ``pack_rows`` asks for them (else on the first step that
        uses them); None, and ``pack_rows`` 0, where they cannot be used."""
        if self._packed is None and self.pack_rows:
            dense = [getattr(layer, name) for layer in self.layers for name in LINEARS]
            if not all(isinstance(w, torch.Tensor) and w.dtype == torch.bfloat16 for w in dense):
                self.pack_rows = 0
                return None
            layers = [[(onednn.pack(getattr(layer, name)), None, 0) for name in LINEARS] for layer in self.layers]
            head = onednn.pack(self.lm_head) if isinstance(self.lm_head, torch.Tensor) else self.lm_head
            first = self.layers[0]
            checks = [(first.qkv, layers[0][0][0]), (first.down, layers[0][3][0])]
            checks += [(self.lm_head, head)] if isinstance(self.lm_head, torch.Tensor) else []
            rows = tuple(sorted({r for r in onednn.CHECK_ROWS if r <= self.pack_rows} | {self.pack_rows}))
            if not all(onednn.same_bits(w, p, rows) for w, p in checks):
                log.warning("oneDNN's packed bf16 weights give other bits than plain ones on this machine; "
                            "not using them")
                self.pack_rows = 0
                return None
            self._packed = (layers, head)
        return self._packed

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        packed = self._packed_weights(hidden.shape[0])
        return linear(hidden, packed[1] if packed else self.lm_head).float()

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
        self._decode_args, self._packed = {}, None

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
