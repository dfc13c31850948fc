"""Paged attention over the KV cache, in plain torch.

Tokens of one step arrive flattened: first the decode tokens (one query per sequence), then the
prefill chunks. Decode queries come in groups of similar context length (the model runner sorts
and splits them); each group is one batched gather of its contexts, padded to the group's longest,
and one SDPA call. A prefill chunk attends causally to its own tokens and to whatever of its
sequence is already in the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PrefillSpan:
    """A prefill chunk: ``query[start:start+length]`` whose sequence then has ``context_len`` tokens.

    ``context_slots`` holds the cache slots of all ``context_len`` tokens when the chunk has earlier
    context in the cache; it is ``None`` when the chunk is the whole sequence so far.
    """

    start: int
    length: int
    context_len: int
    context_slots: torch.Tensor | None


@dataclass(frozen=True)
class DecodeGroup:
    """Decode queries ``start:end`` of the step, their contexts padded to one width."""

    start: int
    end: int
    blocks: torch.Tensor                # [n, blocks] KV blocks each query reads, in order (padded)
    mask: torch.Tensor | None           # [n, 1, 1, blocks * block_size] added to the scores: 0 where the
                                        # slot is real, -inf past the context (a boolean mask, True where
                                        # real, works too); None when every slot is real


@dataclass(frozen=True)
class AttentionMetadata:
    """Where each new token's KV goes and what each query attends to, shared by every layer."""

    slot_mapping: torch.Tensor          # [T] cache slot of each new token
    block_size: int
    decode_groups: tuple[DecodeGroup, ...]   # cover the first tokens of the step, in order
    prefills: tuple[PrefillSpan, ...]

    @property
    def only_decode_group(self) -> DecodeGroup | None:
        """The step's one decode group when it has nothing else (the common decode step), else None."""
        return self.decode_groups[0] if len(self.decode_groups) == 1 and not self.prefills else None


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                    scale: float) -> torch.Tensor:
    """``q: [T, H, D]``, ``k, v: [T, KVH, D]``; writes k, v into the cache; returns ``[T, H, D]``."""
    k_cache.index_copy_(0, meta.slot_mapping, k)
    v_cache.index_copy_(0, meta.slot_mapping, v)
    if (g := meta.only_decode_group) is not None:      # the common decode step: no copy out
        return decode_attention(q, k_cache, v_cache, g.blocks, g.mask, meta.block_size, scale)
    out = torch.empty_like(q)
    for g in meta.decode_groups:
        out[g.start:g.end] = decode_group(q[g.start:g.end], k_cache, v_cache, g, meta.block_size, scale)
    for span in meta.prefills:
        sl = slice(span.start, span.start + span.length)
        out[sl] = _prefill(q[sl], k[sl], v[sl], k_cache, v_cache, span, scale)
    return out


def gather(cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``cache[slots]`` for any shape of ``slots``.

    ``index_select`` on flat indices is about twice as fast as advanced indexing
    (``cache[slots]``) on CPU for these gathers (4 vs 10 us, one thread).
    """
    return cache.index_select(0, slots.reshape(-1)).view(*slots.shape, *cache.shape[1:])


def gather_blocks(cache: torch.Tensor, blocks: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[n, blocks * block_size, kv_heads, head_dim]``: the KV of each row's blocks, in order.

    A block's slots are contiguous in the cache, so copying whole blocks moves the same bytes as
    gathering slot by slot in 16× fewer, larger pieces.
    """
    n, nb = blocks.shape
    by_block = cache.view([-1, block_size] + list(cache.shape[1:]))
    return by_block.index_select(0, blocks.reshape(-1)).view([n, nb * block_size] + list(cache.shape[1:]))


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, blocks: torch.Tensor,
                     mask: Optional[torch.Tensor], block_size: int, scale: float) -> torch.Tensor:
    """Attention of decode queries ``q: [n, H, D]`` over the cached contexts in ``blocks: [n, blocks]``
    (``mask`` as in ``DecodeGroup``). TorchScript-compatible: the scripted decode step runs it too."""
    # Grouped-query trick: the G query heads sharing a KV head act as G query rows against it.
    d, h, hd = q.shape
    kvh = k_cache.shape[1]
    qg = q.view(d, kvh, h // kvh, hd)
    keys = gather_blocks(k_cache, blocks, block_size).transpose(1, 2)      # [D, KVH, ctx, hd]
    values = gather_blocks(v_cache, blocks, block_size).transpose(1, 2)
    out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=mask, scale=scale)
    return out.reshape(d, h, hd)


def decode_group(q, k_cache, v_cache, group: DecodeGroup, block_size: int, scale: float) -> torch.Tensor:
    """Attention of one decode group's queries ``q: [n, H, D]`` over their cached contexts."""
    return decode_attention(q, k_cache, v_cache, group.blocks, group.mask, block_size, scale)


def _prefill(q, k, v, k_cache, v_cache, span: PrefillSpan, scale: float) -> torch.Tensor:
    if span.context_slots is not None:
        k, v = gather(k_cache, span.context_slots), gather(v_cache, span.context_slots)
    # [1, heads, len, hd]: SDPA's fused CPU kernel (flash: tiled, online softmax) takes only 4-D
    # inputs; 3-D ones fall back to the math kernel, which materializes every [len, ctx] score
    # matrix and cost 8x more at 2,048 tokens (docs/engine.md, "Prefill attention").
    qt, kt, vt = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
    if span.context_slots is None:
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale, enable_gqa=True)
    else:
        offset = span.context_len - span.length
        rows = torch.arange(span.length, device=q.device)[:, None] + offset
        mask = torch.arange(span.context_len, device=q.device)[None, :] <= rows
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale, enable_gqa=True)
    return out[0].transpose(0, 1)
