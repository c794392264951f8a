"""LlamaAttention: q/k/v projections, RoPE, grouped-query attention over the KV cache, o_proj.

    qkv      = x @ [q_proj; k_proj; v_proj].T (+ bias)  one gemm over the fused weight
    q, k     = q_norm(q), k_norm(k)                     Qwen3 only: per-head RMSNorm
    q, k     = rope(q, k)                               one call: q and k heads are adjacent
    step.append(k, v)                                   into the KV cache
    out      = step.attend(q)                           softmax(q K.T / sqrt(d) + mask) V
    hidden  += out @ o_proj.T (+ bias)                  the residual folded in (beta = 1)

The last two are the step's: a forward appends at the cache position and attends over the
cache's prefix (`CachedStep`, below); the fixed-shape decode step appends to a fixed slot
or in place and attends over every position with a mask (`FixedStep`, decode_step.py
builds it). The layer has one forward either way.

Attention is composed from gemm + causal_softmax + gemm (InfiniCore 0.1.0's fused
attention op crashes on NVIDIA). GQA needs no repeat_kv copy: the `group` query heads
that share a KV head are stacked along the rows of one matrix, [group * seq, head_dim],
so a single batched gemm over (batch x kv_heads) multiplies them all by their shared K.
MHA (group 1) and MQA (one KV head) are the two ends of the same layout. The q/k/v and
the o_proj names of transformers stay: q_proj, k_proj and v_proj are views of qkv_proj.

A layer with a sliding window (Mistral, Qwen2/3's sliding layers) attends to a query's last
`window` positions, itself included (transformers: kv_idx > q_idx - window): a decode token
attends over the last `window` cached positions only (K/V narrowed, nothing masked); a
prefill longer than the window adds a band mask to the scores.
"""

from __future__ import annotations

import math

import numpy as np

from ...runtime import Tensor, ops
from .buffers import Buffers
from .configuration import LlamaConfig
from .kv_cache import KVCache, mask_value

# The fused projection weight and its checkpoint parts, stacked by rows in this order
# (from_pretrained fuses them on the host, `fused` on the device for other callers).
QKV_WEIGHT = ("qkv_proj.weight", ("q_proj.weight", "k_proj.weight", "v_proj.weight"))
QKV_BIAS = ("qkv_proj.bias", ("q_proj.bias", "k_proj.bias", "v_proj.bias"))


class Linear:
    """y = x @ W.T (+ b), as transformers' nn.Linear. InfiniCore's gemm has no bias: the
    bias is broadcast into the output first and the gemm adds onto it (beta = 1), one
    rounding as in torch's addmm. `accumulate`: the output already holds what to add to
    (the residual stream), the bias is added to it first."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        self.weight, self.bias = weight, bias
        self.weight_t = weight.transpose(0, 1)  # [in, out]: a view, column-major

    def __call__(self, out: Tensor, x: Tensor, *, accumulate: bool = False,
                 bias: bool = True) -> Tensor:
        if self.bias is not None and bias:
            rows = self.bias.as_strided((out.shape[0], self.bias.shape[0]), (0, 1))
            if accumulate:
                ops.add(out, out, rows)
            else:
                ops.copy(out, rows)
            accumulate = True
        ops.gemm(out, x, self.weight_t, 1.0, 1.0 if accumulate else 0.0)
        return out


class LlamaAttention:
    def __init__(self, config: LlamaConfig, layer_idx: int, weights: dict[str, Tensor],
                 window: int | None = None) -> None:
        """`window`: this layer's sliding window (config.layer_window of its global
        index), None for full attention."""
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.group = self.num_heads // self.num_kv_heads
        self.head_dim = config.head_dim
        self.scaling = 1.0 / math.sqrt(config.head_dim)
        self.window = window
        self.eps = config.rms_norm_eps
        # HF Linear weights are [out, in]; y = x @ W.T reads the transposed view directly.
        self.qkv_proj = fused(weights, *QKV_WEIGHT)
        qd, kvd = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = self.qkv_proj.narrow(0, 0, qd)
        self.k_proj = self.qkv_proj.narrow(0, qd, kvd)
        self.v_proj = self.qkv_proj.narrow(0, qd + kvd, kvd)
        self.o_proj = weights["o_proj.weight"]
        self.qkv = Linear(self.qkv_proj, fused(weights, *QKV_BIAS)
                          if QKV_BIAS[1][0] in weights or QKV_BIAS[0] in weights else None)
        self.o = Linear(self.o_proj, weights.get("o_proj.bias"))
        # Qwen3: RMSNorm over head_dim of every q and k head, before RoPE
        self.q_norm = weights.get("q_norm.weight")
        self.k_norm = weights.get("k_norm.weight")

    def forward(self, x: Tensor, bufs: Buffers, step: CachedStep | FixedStep, out: Tensor,
                residual: bool = False, bias: bool = True) -> Tensor:
        """x [T, hidden] (normed) -> `out` [T, hidden]; appends K/V through `step`. With
        `residual`, out += attention (out holds the residual). `bias`: this rank adds
        o_proj's bias (tensor parallelism: one rank of the group)."""
        v = self._cached_views(bufs)
        self.qkv(bufs.qkv, x)
        if self.q_norm is not None:
            ops.rms_norm(v.q3, v.q3, self.q_norm, self.eps)
            ops.rms_norm(v.k3, v.k3, self.k_norm, self.eps)
        rope = step.rope
        ops.rope(v.qk3, v.qk3, bufs.pos_ids, rope.sin, rope.cos, step.rope_algo)
        step.append(self, v)
        attn = step.attend(self, v)
        self.o(out, attn, accumulate=residual, bias=bias)
        return out

    def prepare(self, bufs: Buffers, cache: KVCache, totals: range) -> None:
        """Create the descriptors of the attention at each cache length in `totals`.

        The scores/softmax/values shapes grow by one position per decode step (up to the
        window), so without this every step of a first-time decode would create three
        descriptors.
        """
        q_heads = self._cached_views(bufs).q_heads
        if len(totals):  # the scores grown to the longest first: one layout for every step
            bufs.scores_for(max(totals))
        for total in totals:
            lo = self.window_start(total - bufs.seq, total)
            keys, values, scores, probs = attention_views(self, bufs, cache, lo, total)
            ops.prepare_gemm(scores, q_heads, keys.transpose(1, 2))
            ops.prepare_causal_softmax(probs, probs)
            ops.prepare_gemm(bufs.attn, scores, values)

    def window_start(self, start: int, total: int) -> int:
        """The first cache position any of the queries at [start, total) may see."""
        return 0 if self.window is None else max(0, start - self.window + 1)

    def _cached_views(self, bufs: Buffers) -> _Views:
        views = bufs.views.get("attention")
        if views is None:
            views = bufs.views["attention"] = _Views.of(self, bufs)
        return views


def attention_views(attn: LlamaAttention, bufs: Buffers, cache: KVCache, lo: int,
                    total: int) -> tuple:
    """K, V of positions [lo, total), the scores narrowed to them, and the scores seen as
    [b * heads, s, n] for the softmax."""
    b, s, n = bufs.batch, bufs.seq, total - lo
    keys, values = cache.span(attn.layer_idx, lo, n)  # [b * nkv, n, d]
    scores = bufs.scores_for(n)  # [b * nkv, g * s, n]
    # Softmax per (b, kv head, group) over rows of one sequence: the causal mask is
    # aligned bottom-right, so the s new tokens see the cached ones before them.
    probs = scores.as_strided((b * attn.num_kv_heads * attn.group, s, n),
                              (s * scores.strides[1], scores.strides[1], 1))
    return keys, values, scores, probs


class CachedStep:
    """The plain path's append and attend: `seq` new tokens per row written at `start`,
    attention over the cache's first start + seq positions (a layer's window narrowing
    them), padding and the window masked. One per forward, shared by every layer."""

    def __init__(self, bufs: Buffers, cache: KVCache, start: int, rope, rope_algo) -> None:
        self.bufs, self.cache, self.start = bufs, cache, start
        self.rope, self.rope_algo = rope, rope_algo

    def append(self, attn: LlamaAttention, v: _Views) -> None:
        cache, s = self.cache, self.bufs.seq
        k_slot, v_slot = cache.slot(attn.layer_idx, self.start, s)  # [b, nkv, s, d]
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

    def attend(self, attn: LlamaAttention, v: _Views) -> Tensor:
        bufs, cache = self.bufs, self.cache
        if v.q_src is not None:
            # [b, s, nkv, g, d] -> [b, nkv, g, s, d]: each KV head's query rows together.
            ops.copy(v.q_dst, v.q_src)
        total = self.start + bufs.seq
        lo = attn.window_start(self.start, total)
        keys, values, scores, probs = attention_views(attn, bufs, cache, lo, total)
        ops.gemm(scores, v.q_heads, keys.transpose(1, 2), alpha=attn.scaling)
        if attn.window is not None and total - lo > attn.window:
            ops.add(*self._band(attn, scores, lo, total))
        elif cache.masked:  # padded rows: their padding positions are never attended to
            ops.add(*self._padding(attn, scores, lo, total))
        ops.causal_softmax(probs, probs)
        ops.gemm(bufs.attn, scores, values)  # [b * nkv, g * s, d]
        if v.attn_src is not None:
            ops.copy(v.attn_dst, v.attn_src)
        return v.attn_tokens

    def _padding(self, attn: LlamaAttention, scores: Tensor, lo: int, total: int) -> tuple:
        b, nkv, rows, n = self.bufs.batch, attn.num_kv_heads, scores.shape[1], total - lo
        s4 = scores.as_strided((b, nkv, rows, n),
                               (nkv * scores.strides[0], scores.strides[0], scores.strides[1],
                                1))
        mask = self.cache.mask.narrow(1, lo, n)
        m = mask.as_strided((b, nkv, rows, n), (mask.strides[0], 0, 0, 1))
        return s4, s4, m

    def _band(self, attn: LlamaAttention, scores: Tensor, lo: int, total: int) -> tuple:
        """A prefill longer than the window: query i (at start + i) masks the keys at
        positions <= start + i - window, and padding; one [b, s, n] mask on the host."""
        b, s, n, w = self.bufs.batch, self.bufs.seq, total - lo, attn.window
        cache = self.cache
        band = np.arange(n)[None, :] + lo <= self.start + np.arange(s)[:, None] - w
        masked = band[None] | cache.padding[:, None, lo:total]
        m = Tensor.from_numpy(np.where(masked, mask_value(cache.dtype), 0.0), cache.device,
                              cache.dtype)
        nkv, g, st0, st1 = attn.num_kv_heads, attn.group, scores.strides[0], scores.strides[1]
        s5 = scores.as_strided((b, nkv, g, s, n), (nkv * st0, st0, s * st1, st1, 1))
        m5 = m.as_strided((b, nkv, g, s, n), (s * n, 0, 0, n, 1))
        return s5, s5, m5


class FixedStep:
    """The fixed-shape decode step's append and attend (decode_step.py), the buffers every
    layer's attention shares: the scores over a span of the cache's first n positions and
    the step's additive masks in the same layout (one per window among the layers). The
    span is the step's (`use`): a power of two past the cache length, so the attention
    reads what is filled and a little more, not the whole allocation; each span has shapes
    and pointers of its own, one captured graph each."""

    def __init__(self, cache: KVCache, bufs: Buffers, scores: Tensor,
                 masks: dict[int | None, Tensor], rope, rope_algo,
                 lengths: Tensor | None = None, seq_lens: Tensor | None = None,
                 block_tables: Tensor | None = None) -> None:
        """`scores`: [b * kv_heads, group, max_len + 1], every span a view of it;
        `lengths`: the cache length per row on the device, where the new K/V are appended
        in place (kv_caching) instead of into the decode slot; `seq_lens` and
        `block_tables`: paged attention over the cache (seq_lens = lengths + 1)."""
        self.cache, self.bufs, self.scores_all = cache, bufs, scores
        self.rope, self.rope_algo = rope, rope_algo
        self.lengths, self.seq_lens, self.block_tables = lengths, seq_lens, block_tables
        self.use(scores.shape[2], masks)

    def use(self, n: int, masks: dict[int | None, Tensor], slot: int | None = None) -> None:
        """Attend over the cache's first `n` positions with these masks; the new K/V go to
        position `slot` (default max_len; unused with in-place appends)."""
        self.n, self.masks, self.slot = n, masks, slot
        rows, group, _ = self.scores_all.shape
        # A contiguous [rows, group, n] at the buffer's start, not a narrowed view of the
        # whole allocation: the layout the whole-allocation step always had (one per span,
        # each span its own graph). Narrowed rows of max_len + 1 elements are not 32-byte
        # aligned, and NVIDIA's rearrange dies on such rows (known defect
        # nvidia-rearrange-unaligned-rows-segfault): with narrowed scores every graph
        # check crashed on 0.1.0 (H200, 2026-12-07).
        self.scores = self.scores_all.as_strided((rows, group, n), (group * n, n, 1))
        # every query row its own softmax of one row (group rows are heads, not tokens)
        self.probs = self.scores.view(rows * group, 1, n)

    def append(self, attn: LlamaAttention, v: _Views) -> None:
        cache, i = self.cache, attn.layer_idx
        if self.lengths is not None:  # kv_caching: at the cache length, read on the device
            ops.kv_caching(cache.keys[i], cache.values[i], v.k_src, v.v_src, self.lengths)
            return
        k_slot, v_slot = cache.decode_slot(i, self.slot)
        ops.copy(k_slot, v.k_src)
        ops.copy(v_slot, v.v_src)

    def attend(self, attn: LlamaAttention, v: _Views) -> Tensor:
        cache, bufs, i = self.cache, self.bufs, attn.layer_idx
        if self.seq_lens is not None:  # paged attention: each row's cache one block
            b, d = bufs.batch, attn.head_dim
            ops.paged_attention(v.attn_tokens.view(b, attn.num_heads, d),
                                v.qk3.narrow(1, 0, attn.num_heads), cache.keys[i],
                                cache.values[i], self.block_tables, self.seq_lens,
                                attn.scaling)
            return v.attn_tokens
        if v.q_src is not None:
            ops.copy(v.q_dst, v.q_src)
        keys, values = cache.full(i, self.n)
        ops.copy(self.scores, self.masks[attn.window])
        ops.gemm(self.scores, v.q_heads, keys.transpose(1, 2), attn.scaling, 1.0)
        ops.causal_softmax(self.probs, self.probs)  # one row per matrix: nothing masked
        ops.gemm(bufs.attn, self.scores, values)
        if v.attn_src is not None:
            ops.copy(v.attn_dst, v.attn_src)
        return v.attn_tokens


class _Views:
    """The views of one buffer shape, made once: a decode step reuses them all.

    The query regrouping and its inverse are copies only where the layouts differ: for a
    single new token of a single sequence ([1, 1, nkv, g, d] vs [1, nkv, g, 1, d]) they
    coincide, so decode feeds q and the attention output to the gemms as they are
    (None = no copy). The regrouping follows HF's repeat_kv: query head h belongs to KV
    head h // group."""

    __slots__ = ("qk3", "q3", "k3", "k_src", "v_src", "q_heads", "q_dst", "q_src",
                 "attn_tokens", "attn_dst", "attn_src")

    @classmethod
    def of(cls, attn: LlamaAttention, bufs: Buffers) -> _Views:
        b, s, d = bufs.batch, bufs.seq, attn.head_dim
        nh, nkv, g = attn.num_heads, attn.num_kv_heads, attn.group
        width = bufs.qkv.shape[1]
        v = cls()
        # q and k heads are adjacent in the fused buffer: one rope call rotates both.
        v.qk3 = bufs.qkv.as_strided((b * s, nh + nkv, d), (width, d, 1))
        v.q3, v.k3 = v.qk3.narrow(1, 0, nh), v.qk3.narrow(1, nh, nkv)
        # k and v as [b, nkv, s, d] views of the fused buffer (rows of `width`)
        kv_view = (b, nkv, s, d), (s * width, d, width, 1)
        v.k_src = bufs.qkv.as_strided(*kv_view, offset=bufs.k.offset)
        v.v_src = bufs.qkv.as_strided(*kv_view, offset=bufs.v.offset)
        q_src = bufs.qkv.as_strided((b, nkv, g, s, d), (s * width, g * d, d, width, 1))
        v.q_heads, v.q_dst = bufs.q_heads, bufs.q_heads.view(b, nkv, g, s, d)
        v.q_src = q_src
        if b * s == 1:
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
    out = Tensor.empty((rows, *pieces[0].shape[1:]), pieces[0].dtype, pieces[0].device)
    at = 0
    for p in pieces:
        ops.copy(out.narrow(0, at, p.shape[0]), p)
        at += p.shape[0]
    return out
