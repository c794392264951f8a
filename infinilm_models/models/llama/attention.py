"""LlamaAttention: q/k/v projections, RoPE, grouped-query attention over the KV cache, o_proj.

    qkv      = x @ [q_proj; k_proj; v_proj].T          one gemm over the fused weight
    q, k     = rope(q, k)                              one call: q and k heads are adjacent
    cache   <- k, v                                    appended at the cache position
    scores   = q @ K.T / sqrt(d) (+ mask)              one batched gemm over batch x kv heads
    probs    = causal_softmax(scores)
    out      = probs @ V
    hidden  += out @ o_proj.T                          the residual folded in (beta = 1)

Attention is composed from gemm + causal_softmax + gemm (InfiniCore 0.1.0's fused
attention op crashes on NVIDIA). GQA needs no repeat_kv copy: the `group` query heads
that share a KV head are stacked along the rows of one matrix, [group * seq, head_dim],
so a single batched gemm over (batch x kv_heads) multiplies them all by their shared K.
MHA (group 1) and MQA (one KV head) are the two ends of the same layout. The q/k/v and
the o_proj names of transformers stay: q_proj, k_proj and v_proj are views of qkv_proj.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ...runtime import Tensor, ops
from .buffers import Buffers
from .configuration import LlamaConfig
from .kv_cache import KVCache
from .rope import LlamaRotaryEmbedding

# The fused projection weight and its checkpoint parts, stacked by rows in this order
# (from_pretrained fuses them on the host, `fused` on the device for other callers).
QKV_WEIGHT = ("qkv_proj.weight", ("q_proj.weight", "k_proj.weight", "v_proj.weight"))


class LlamaAttention:
    def __init__(self, config: LlamaConfig, layer_idx: int, weights: dict[str, Tensor]) -> None:
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.group = self.num_heads // self.num_kv_heads
        self.head_dim = config.head_dim
        self.scaling = 1.0 / math.sqrt(config.head_dim)
        # HF Linear weights are [out, in]; y = x @ W.T reads the transposed view directly.
        self.qkv_proj = fused(weights, *QKV_WEIGHT)
        qd, kvd = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = self.qkv_proj.narrow(0, 0, qd)
        self.k_proj = self.qkv_proj.narrow(0, qd, kvd)
        self.v_proj = self.qkv_proj.narrow(0, qd + kvd, kvd)
        self.o_proj = weights["o_proj.weight"]
        self._qkv_t, self._o_t = self.qkv_proj.transpose(0, 1), self.o_proj.transpose(0, 1)

    def forward(self, x: Tensor, bufs: Buffers, cache: KVCache, start: int,
                rope: LlamaRotaryEmbedding, rope_algo: ops.RoPEAlgo, out: Tensor,
                residual: bool) -> Tensor:
        """x [T, hidden] (normed) -> `out` [T, hidden]; appends K/V at `start`. With
        `residual`, out += attention (o_proj with beta = 1: out holds the residual)."""
        v = self._cached_views(bufs)
        s = bufs.seq
        ops.gemm(bufs.qkv, x, self._qkv_t)
        ops.rope(v.qk3, v.qk3, bufs.pos_ids, rope.sin, rope.cos, rope_algo)
        self._append(cache, start, s, v)
        if v.q_src is not None:
            # [b, s, nkv, g, d] -> [b, nkv, g, s, d]: each KV head's query rows together.
            ops.copy(v.q_dst, v.q_src)
        self._attend(bufs, cache, start + s, v.q_heads)
        if v.attn_src is not None:
            ops.copy(v.attn_dst, v.attn_src)
        ops.gemm(out, v.attn_tokens, self._o_t, 1.0, 1.0 if residual else 0.0)
        return out

    def forward_fixed(self, x: Tensor, bufs: Buffers, cache: KVCache,
                      rope: LlamaRotaryEmbedding, rope_algo: ops.RoPEAlgo, out: Tensor,
                      residual: bool, step: FixedStep) -> Tensor:
        """One decode token per row with shapes and pointers that do not depend on the
        cache length (a captured graph replays it at every step): the new K/V go to the
        cache's fixed slot, and the scores span all max_len + 1 positions, with the
        step's additive mask copied in first and the product added (beta = 1)."""
        v = self._cached_views(bufs)
        ops.gemm(bufs.qkv, x, self._qkv_t)
        ops.rope(v.qk3, v.qk3, bufs.pos_ids, rope.sin, rope.cos, rope_algo)
        if step.lengths is not None:  # kv_caching: at the cache length, read on the device
            ops.kv_caching(cache.keys[self.layer_idx], cache.values[self.layer_idx],
                           v.k_src, v.v_src, step.lengths)
            if step.seq_lens is not None:  # paged attention: each row's cache one block
                b, d = bufs.batch, self.head_dim
                ops.paged_attention(v.attn_tokens.view(b, self.num_heads, d),
                                    v.qk3.narrow(1, 0, self.num_heads),
                                    cache.keys[self.layer_idx], cache.values[self.layer_idx],
                                    step.block_tables, step.seq_lens, self.scaling)
                ops.gemm(out, v.attn_tokens, self._o_t, 1.0, 1.0 if residual else 0.0)
                return out
        else:
            k_slot, v_slot = cache.decode_slot(self.layer_idx)
            ops.copy(k_slot, v.k_src)
            ops.copy(v_slot, v.v_src)
        if v.q_src is not None:
            ops.copy(v.q_dst, v.q_src)
        keys, values = cache.full(self.layer_idx)
        ops.copy(step.scores, step.mask)
        ops.gemm(step.scores, v.q_heads, keys.transpose(1, 2), self.scaling, 1.0)
        ops.causal_softmax(step.probs, step.probs)  # one row per matrix: nothing masked
        ops.gemm(bufs.attn, step.scores, values)
        if v.attn_src is not None:
            ops.copy(v.attn_dst, v.attn_src)
        ops.gemm(out, v.attn_tokens, self._o_t, 1.0, 1.0 if residual else 0.0)
        return out

    def _append(self, cache: KVCache, start: int, s: int, v: _Views) -> None:
        k_slot, v_slot = cache.slot(self.layer_idx, start, s)  # [b, nkv, s, d]
        if s > 1 and cache.batch_size > 1:
            # One copy per sequence: InfiniCore 0.1.0's NVIDIA rearrange plans some
            # multi-sequence appends wrong in 16-bit (known defect
            # nvidia-rearrange-16bit-batched-cache-append, upstream issue #722); a single
            # sequence's [kv, s, d] block is planned right on every backend.
            for b in range(cache.batch_size):
                ops.copy(k_slot.select(0, b), v.k_src.select(0, b))
                ops.copy(v_slot.select(0, b), v.v_src.select(0, b))
            return
        ops.copy(k_slot, v.k_src)
        ops.copy(v_slot, v.v_src)

    def _attend(self, bufs: Buffers, cache: KVCache, total: int, q_heads: Tensor) -> None:
        keys, values, scores, probs = self._attention_views(bufs, cache, total)
        ops.gemm(scores, q_heads, keys.transpose(1, 2), alpha=self.scaling)
        if cache.masked:  # padded rows: their padding positions are never attended to
            ops.add(*self._masked(bufs, cache, scores, total))
        ops.causal_softmax(probs, probs)
        ops.gemm(bufs.attn, scores, values)  # [b * nkv, g * s, d]

    def _masked(self, bufs: Buffers, cache: KVCache, scores: Tensor, total: int) -> tuple:
        b, nkv, rows = bufs.batch, self.num_kv_heads, scores.shape[1]
        s4 = scores.as_strided((b, nkv, rows, total),
                               (nkv * scores.strides[0], scores.strides[0], scores.strides[1],
                                1))
        m = cache.mask.as_strided((b, nkv, rows, total), (cache.mask.strides[0], 0, 0, 1))
        return s4, s4, m

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
        q_heads = self._cached_views(bufs).q_heads
        for total in totals:
            keys, values, scores, probs = self._attention_views(bufs, cache, total)
            ops.prepare_gemm(scores, q_heads, keys.transpose(1, 2))
            ops.prepare_causal_softmax(probs, probs)
            ops.prepare_gemm(bufs.attn, scores, values)

    def _cached_views(self, bufs: Buffers) -> _Views:
        views = bufs.views.get("attention")
        if views is None:
            views = bufs.views["attention"] = _Views.of(self, bufs)
        return views

    # The regrouping of the query heads: query head h belongs to KV head h // group, as
    # HF's repeat_kv lays them out. Replaced by the self-tests to plant a wrong mapping.
    query_heads: Callable[[LlamaAttention, Buffers], Tensor] | None = None


class FixedStep:
    """The buffers of a fixed-shape decode step that the attention of every layer shares:
    the scores over all positions and the step's mask in the same layout."""

    def __init__(self, scores: Tensor, mask: Tensor, lengths: Tensor | None = None,
                 seq_lens: Tensor | None = None, block_tables: Tensor | None = None) -> None:
        """`lengths`: the cache length per row on the device, where the new K/V are
        appended in place (kv_caching) instead of into the decode slot; `seq_lens` and
        `block_tables`: paged attention over the cache (seq_lens = lengths + 1)."""
        self.scores, self.mask, self.lengths = scores, mask, lengths
        self.seq_lens, self.block_tables = seq_lens, block_tables
        rows, group, n = scores.shape
        # every query row its own softmax of one row (group rows are heads, not tokens)
        self.probs = scores.view(rows * group, 1, n)


class _Views:
    """The views of one buffer shape, made once: a decode step reuses them all.

    The query regrouping and its inverse are copies only where the layouts differ: for a
    single new token of a single sequence ([1, 1, nkv, g, d] vs [1, nkv, g, 1, d]) they
    coincide, so decode feeds q and the attention output to the gemms as they are
    (None = no copy)."""

    __slots__ = ("qk3", "k_src", "v_src", "q_heads", "q_dst", "q_src", "attn_tokens",
                 "attn_dst", "attn_src")

    @classmethod
    def of(cls, attn: LlamaAttention, bufs: Buffers) -> _Views:
        b, s, d = bufs.batch, bufs.seq, attn.head_dim
        nh, nkv, g = attn.num_heads, attn.num_kv_heads, attn.group
        width = bufs.qkv.shape[1]
        v = cls()
        # q and k heads are adjacent in the fused buffer: one rope call rotates both.
        v.qk3 = bufs.qkv.as_strided((b * s, nh + nkv, d), (width, d, 1))
        # k and v as [b, nkv, s, d] views of the fused buffer (rows of `width`)
        kv_view = (b, nkv, s, d), (s * width, d, width, 1)
        v.k_src = bufs.qkv.as_strided(*kv_view, offset=bufs.k.offset)
        v.v_src = bufs.qkv.as_strided(*kv_view, offset=bufs.v.offset)
        q_src = (attn.query_heads(bufs) if attn.query_heads is not None else
                 bufs.qkv.as_strided((b, nkv, g, s, d), (s * width, g * d, d, width, 1)))
        v.q_heads, v.q_dst = bufs.q_heads, bufs.q_heads.view(b, nkv, g, s, d)
        v.q_src = q_src
        if b * s == 1 and attn.query_heads is None:
            v.q_heads, v.q_src = q_src.as_strided((nkv, g, d), (g * d, d, 1)), None
        attn_src = bufs.attn.view(b, nkv, g, s, d).permute(0, 3, 1, 2, 4)
        v.attn_tokens, v.attn_dst = bufs.attn_tokens, bufs.attn_tokens.view(b, s, nkv, g, d)
        v.attn_src = attn_src
        if attn_src.is_contiguous():
            v.attn_tokens, v.attn_src = attn_src.view(b * s, nh * d), None
        return v


def fused(weights: dict[str, Tensor], name: str, parts: tuple[str, ...]) -> Tensor:
    """The fused weight `name`, or one made on the device from its parts (rows stacked)."""
    if name in weights:
        return weights[name]
    pieces = [weights[p] for p in parts]
    rows = sum(p.shape[0] for p in pieces)
    out = Tensor.empty((rows, pieces[0].shape[1]), pieces[0].dtype, pieces[0].device)
    at = 0
    for p in pieces:
        ops.copy(out.narrow(0, at, p.shape[0]), p)
        at += p.shape[0]
    return out
