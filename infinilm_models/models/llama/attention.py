"""LlamaAttention: q/k/v projections, RoPE, grouped-query attention over the KV cache, o_proj.

Attention is composed from gemm + causal_softmax + gemm (InfiniCore 0.1.0's fused
attention op crashes on NVIDIA). GQA needs no repeat_kv copy: the `group` query heads
that share a KV head are stacked along the rows of one matrix, [group * seq, head_dim],
so a single batched gemm over (batch x kv_heads) multiplies them all by their shared K.
MHA (group 1) and MQA (one KV head) are the two ends of the same layout.
"""

from __future__ import annotations

import math

from ...runtime import Tensor, ops
from .buffers import Buffers
from .configuration import LlamaConfig
from .kv_cache import KVCache
from .rope import LlamaRotaryEmbedding


class LlamaAttention:
    def __init__(self, config: LlamaConfig, layer_idx: int, weights: dict[str, Tensor]) -> None:
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.group = self.num_heads // self.num_kv_heads
        self.head_dim = config.head_dim
        self.scaling = 1.0 / math.sqrt(config.head_dim)
        # HF Linear weights are [out, in]; y = x @ W.T reads the transposed view directly.
        self.q_proj = weights["q_proj.weight"]
        self.k_proj = weights["k_proj.weight"]
        self.v_proj = weights["v_proj.weight"]
        self.o_proj = weights["o_proj.weight"]
        self._q_t, self._k_t, self._v_t, self._o_t = (
            w.transpose(0, 1) for w in (self.q_proj, self.k_proj, self.v_proj, self.o_proj))

    def forward(self, x: Tensor, bufs: Buffers, cache: KVCache, start: int,
                rope: LlamaRotaryEmbedding, rope_algo: ops.RoPEAlgo) -> Tensor:
        """x [T, hidden] (normed) -> bufs.attn_out [T, hidden]; appends K/V at `start`."""
        q3, k3, k_src, v_src, q_heads, q_dst, q_src, attn_tokens, attn_dst, attn_src = \
            self._cached_views(bufs)
        s = bufs.seq
        ops.gemm(bufs.q, x, self._q_t)
        ops.gemm(bufs.k, x, self._k_t)
        ops.gemm(bufs.v, x, self._v_t)

        ops.rope(q3, q3, bufs.pos_ids, rope.sin, rope.cos, rope_algo)
        ops.rope(k3, k3, bufs.pos_ids, rope.sin, rope.cos, rope_algo)

        k_slot, v_slot = cache.slot(self.layer_idx, start, s)  # [b, nkv, s, d]
        ops.copy(k_slot, k_src)
        ops.copy(v_slot, v_src)
        if q_src is not None:
            # [b, s, nkv, g, d] -> [b, nkv, g, s, d]: each KV head's query rows together.
            ops.copy(q_dst, q_src)

        keys, values, scores, probs = self._attention_views(bufs, cache, start + s)
        ops.gemm(scores, q_heads, keys.transpose(1, 2), alpha=self.scaling)
        ops.causal_softmax(probs, probs)
        ops.gemm(bufs.attn, scores, values)  # [b * nkv, g * s, d]
        if attn_src is not None:
            ops.copy(attn_dst, attn_src)
        ops.gemm(bufs.attn_out, attn_tokens, self._o_t)
        return bufs.attn_out

    def _attention_views(self, bufs: Buffers, cache: KVCache, total: int) -> tuple:
        """K, V of the first `total` positions, the scores narrowed to them, and the
        scores seen as [b * heads, s, total] for the softmax."""
        b, s = bufs.batch, bufs.seq
        keys, values = cache.prefix(self.layer_idx, total)  # [b * nkv, total, d]
        scores = bufs.scores.narrow(2, 0, total)  # [b * nkv, g * s, total], rows of max_len
        # Softmax per (b, kv head, group) over rows of one sequence: the causal mask is
        # aligned bottom-right, so the s new tokens see the `start` cached ones.
        probs = scores.as_strided((b * self.num_kv_heads * self.group, s, total),
                                  (s * scores.strides[1], scores.strides[1], 1))
        return keys, values, scores, probs

    def prepare(self, bufs: Buffers, cache: KVCache, totals: range) -> None:
        """Create the descriptors of the attention at each cache length in `totals`.

        The scores/softmax/values shapes grow by one position per decode step, so without
        this every step of a first-time decode would create three descriptors.
        """
        q_heads = self._cached_views(bufs)[4]
        for total in totals:
            keys, values, scores, probs = self._attention_views(bufs, cache, total)
            ops.prepare_gemm(scores, q_heads, keys.transpose(1, 2))
            ops.prepare_causal_softmax(probs, probs)
            ops.prepare_gemm(bufs.attn, scores, values)

    def _cached_views(self, bufs: Buffers) -> tuple:
        views = bufs.views.get("attention")
        if views is None:
            views = bufs.views["attention"] = self._views(bufs)
        return views

    def _views(self, bufs: Buffers) -> tuple:
        """The views of one buffer shape, made once: a decode step reuses them all.

        The query regrouping and its inverse are copies only where the layouts differ: for
        a single new token ([b, 1, nkv, g, d] vs [b, nkv, g, 1, d]) they coincide, so
        decode feeds q and the attention output to the gemms as they are (None = no copy).
        """
        b, s, d = bufs.batch, bufs.seq, self.head_dim
        nh, nkv, g = self.num_heads, self.num_kv_heads, self.group
        q3, k3 = bufs.q.view(b * s, nh, d), bufs.k.view(b * s, nkv, d)
        k_src = bufs.k.view(b, s, nkv, d).permute(0, 2, 1, 3)
        v_src = bufs.v.view(b, s, nkv, d).permute(0, 2, 1, 3)
        q_src = self._query_heads(bufs)
        q_heads, q_dst = bufs.q_heads, bufs.q_heads.view(b, nkv, g, s, d)
        if q_src.is_contiguous():
            q_heads, q_src = q_src.view(b * nkv, g * s, d), None
        attn_src = bufs.attn.view(b, nkv, g, s, d).permute(0, 3, 1, 2, 4)
        attn_tokens, attn_dst = bufs.attn_tokens, bufs.attn_tokens.view(b, s, nkv, g, d)
        if attn_src.is_contiguous():
            attn_tokens, attn_src = attn_src.view(b * s, nh * d), None
        return q3, k3, k_src, v_src, q_heads, q_dst, q_src, attn_tokens, attn_dst, attn_src

    def _query_heads(self, bufs: Buffers) -> Tensor:
        """q [b, s, heads, d] viewed as [b, kv_heads, group, s, d]: query head h belongs to
        KV head h // group, as HF's repeat_kv lays them out."""
        b, s, d = bufs.batch, bufs.seq, self.head_dim
        return bufs.q.view(b, s, self.num_kv_heads, self.group, d).permute(0, 2, 3, 1, 4)
