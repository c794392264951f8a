"""paged_attention_prefill in float64 from the op's own arguments, and its cases prepared
(the contract: the check's docstring, conformance/ops/test_op_paged_attention_prefill.py)."""

from __future__ import annotations

import numpy as np

from ..common import host, rng_for, to_device
from ..paged_layout import PreparedAttention, alibi_slopes, attend, gather, make_layout, pools
from ..shapes import HEAD_DIM, HEADS, KV_HEADS, PREFILL

# name: heads, kv_heads, q_lens (new tokens per sequence), history (tokens each already
#   held), block_size, index (dtype of block_tables, seq_lens and cum_seq_lens_q), alibi,
#   layout: "contiguous" or "q_from_qkv" (q sliced from a fused [tokens, q+k+v heads, d]).
CASES = {
    "smollm2_batch1": dict(heads=HEADS, kv_heads=KV_HEADS, q_lens=(PREFILL,), history=(0,),
                           block_size=16, index="i64", alibi=False, layout="contiguous"),
    "smollm2_varlen_batch3": dict(heads=HEADS, kv_heads=KV_HEADS, q_lens=(PREFILL, 1, 9),
                                  history=(0, 20, 16), block_size=16, index="i64",
                                  alibi=False, layout="contiguous"),
    "smollm2_chunk_long_history": dict(heads=HEADS, kv_heads=KV_HEADS, q_lens=(9,),
                                       history=(140,), block_size=16, index="i64",
                                       alibi=False, layout="contiguous"),
    "smollm2_index_i32": dict(heads=HEADS, kv_heads=KV_HEADS, q_lens=(9, PREFILL, 1),
                              history=(16, 0, 30), block_size=16, index="i32", alibi=False,
                              layout="contiguous"),
    "smollm2_q_from_qkv": dict(heads=HEADS, kv_heads=KV_HEADS, q_lens=(PREFILL, 5),
                               history=(0, 11), block_size=16, index="i64", alibi=False,
                               layout="q_from_qkv"),
    "smollm2_alibi": dict(heads=HEADS, kv_heads=KV_HEADS, q_lens=(PREFILL, 4),
                          history=(0, 13), block_size=16, index="i64", alibi=True,
                          layout="contiguous"),
    "block256": dict(heads=HEADS, kv_heads=KV_HEADS, q_lens=(20, 3), history=(280, 0),
                     block_size=256, index="i64", alibi=False, layout="contiguous"),
    "tiny_mqa": dict(heads=2, kv_heads=1, q_lens=(3, 5), history=(0, 4), block_size=4,
                     index="i64", alibi=False, layout="contiguous"),
}
SCALE = HEAD_DIM ** -0.5  # 0.125, exact in f32


def reference(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray,
              block_tables: np.ndarray, seq_lens: np.ndarray, cum_seq_lens_q: np.ndarray,
              scale: float, alibi: np.ndarray | None = None) -> np.ndarray:
    """Float64 paged prefill attention, from the op's own arguments."""
    out = np.empty(q.shape[:2] + (v_cache.shape[3],))
    for s in range(len(seq_lens)):
        lo, hi, n = int(cum_seq_lens_q[s]), int(cum_seq_lens_q[s + 1]), int(seq_lens[s])
        keys, vals = gather(k_cache, block_tables[s], n), gather(v_cache, block_tables[s], n)
        history = n - (hi - lo)
        out[lo:hi] = attend(q[lo:hi], keys, vals, history + np.arange(hi - lo), scale, alibi)
    return out


class Prepared(PreparedAttention):
    # args: (out, q, k_cache, v_cache, block_tables, seq_lens, cum_seq_lens_q, scale,
    #       alibi_slopes)
    op = "paged_attention_prefill"


def prepare(case: str, dtype: str, device) -> Prepared:
    c = CASES[case]
    rng = rng_for("paged_attention_prefill", case, dtype)
    nh, nkv, d = c["heads"], c["kv_heads"], HEAD_DIM
    q_lens = np.array(c["q_lens"], dtype=np.int64)
    seq_lens = q_lens + np.array(c["history"], dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int64)
    layout = make_layout(rng, seq_lens, c["block_size"])
    kc, vc = pools(rng, layout, nkv, d, dtype)
    total = int(cum[-1])
    q = host((total, nh, d), dtype, rng)
    slopes = alibi_slopes(nh) if c["alibi"] else None
    expected = reference(q, kc, vc, layout.block_tables, seq_lens, cum, SCALE, slopes)
    if c["layout"] == "q_from_qkv":
        fused = host((total, nh + 2 * nkv, d), dtype, rng)
        fused[:, :nh] = q
        qt = to_device(fused, device, dtype).narrow(1, 0, nh)
    else:
        qt = to_device(q, device, dtype)
    out = to_device(np.full(q.shape, np.nan), device, dtype)  # unwritten rows show as NaN
    idx = c["index"]
    args = (out, qt, to_device(kc, device, dtype), to_device(vc, device, dtype),
            to_device(layout.block_tables, device, idx), to_device(seq_lens, device, idx),
            to_device(cum, device, idx), SCALE,
            None if slopes is None else to_device(slopes, device, "f32"))
    return Prepared(args, layout, expected,
                    {"q": q, "k_cache": kc, "v_cache": vc, "seq_lens": seq_lens,
                     "cum_seq_lens_q": cum, "alibi_slopes": slopes})
