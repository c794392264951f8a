"""paged_attention in float64 from the op's own arguments, and its cases prepared (the
contract: the check's docstring, conformance/ops/test_op_paged_attention.py)."""

from __future__ import annotations

import numpy as np

from ..common import host, rng_for, to_device
from ..paged_layout import PreparedAttention, alibi_slopes, attend, gather, make_layout, pools
from ..shapes import DECODE_POS, HEAD_DIM, HEADS, KV_HEADS, LONG_KEYS, PREFILL

# name: heads, kv_heads, lens (tokens each sequence holds, the new one included),
#   block_size, index (dtype of block_tables and seq_lens), alibi, layout: "contiguous" or
#   "q_from_qkv" (q is the query slice of a fused [seqs, q + k + v heads, d] projection).
CASES = {
    "smollm2_batch1": dict(heads=HEADS, kv_heads=KV_HEADS, lens=(DECODE_POS + 1,),
                           block_size=16, index="i64", alibi=False, layout="contiguous"),
    "smollm2_batch4": dict(heads=HEADS, kv_heads=KV_HEADS,
                           lens=(1, 17, PREFILL, DECODE_POS + 1), block_size=16,
                           index="i64", alibi=False, layout="contiguous"),
    "smollm2_batch4_index_i32": dict(heads=HEADS, kv_heads=KV_HEADS,
                                     lens=(DECODE_POS + 1, 1, 17, PREFILL), block_size=16,
                                     index="i32", alibi=False, layout="contiguous"),
    "smollm2_q_from_qkv": dict(heads=HEADS, kv_heads=KV_HEADS, lens=(PREFILL, 16, 33),
                               block_size=16, index="i64", alibi=False, layout="q_from_qkv"),
    "smollm2_alibi": dict(heads=HEADS, kv_heads=KV_HEADS, lens=(5, DECODE_POS + 1),
                          block_size=16, index="i64", alibi=True, layout="contiguous"),
    "block256": dict(heads=HEADS, kv_heads=KV_HEADS, lens=(300, 5), block_size=256,
                     index="i64", alibi=False, layout="contiguous"),
    "tiny_mqa": dict(heads=2, kv_heads=1, lens=(3, 10), block_size=4, index="i64",
                     alibi=False, layout="contiguous"),
    # decode over several hundred and a few thousand cached positions
    "smollm2_decode_long": dict(heads=HEADS, kv_heads=KV_HEADS, lens=LONG_KEYS, block_size=16,
                                index="i64", alibi=False, layout="contiguous"),
}
SCALE = HEAD_DIM ** -0.5  # 0.125, exact in f32


def reference(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray,
              block_tables: np.ndarray, seq_lens: np.ndarray, scale: float,
              alibi: np.ndarray | None = None) -> np.ndarray:
    """Float64 paged decode attention, from the op's own arguments."""
    out = np.empty(q.shape[:2] + (v_cache.shape[3],))
    for s in range(q.shape[0]):
        n = int(seq_lens[s])
        keys, vals = gather(k_cache, block_tables[s], n), gather(v_cache, block_tables[s], n)
        out[s] = attend(q[s][None], keys, vals, np.array([n - 1]), scale, alibi)[0]
    return out


class Prepared(PreparedAttention):
    # args: (out, q, k_cache, v_cache, block_tables, seq_lens, scale, alibi_slopes)
    op = "paged_attention"


def prepare(case: str, dtype: str, device) -> Prepared:
    c = CASES[case]
    rng = rng_for("paged_attention", case, dtype)
    nh, nkv, d = c["heads"], c["kv_heads"], HEAD_DIM
    layout = make_layout(rng, c["lens"], c["block_size"])
    kc, vc = pools(rng, layout, nkv, d, dtype)
    seq_lens = np.array(c["lens"], dtype=np.int64)
    q = host((layout.num_seqs, nh, d), dtype, rng)
    slopes = alibi_slopes(nh) if c["alibi"] else None
    expected = reference(q, kc, vc, layout.block_tables, seq_lens, SCALE, slopes)
    if c["layout"] == "q_from_qkv":
        fused = host((layout.num_seqs, nh + 2 * nkv, d), dtype, rng)
        fused[:, :nh] = q
        qt = to_device(fused, device, dtype).narrow(1, 0, nh)
    else:
        qt = to_device(q, device, dtype)
    out = to_device(np.full(q.shape, np.nan), device, dtype)  # unwritten rows show as NaN
    idx = c["index"]
    args = (out, qt, to_device(kc, device, dtype), to_device(vc, device, dtype),
            to_device(layout.block_tables, device, idx), to_device(seq_lens, device, idx),
            SCALE, None if slopes is None else to_device(slopes, device, "f32"))
    return Prepared(args, layout, expected,
                    {"q": q, "k_cache": kc, "v_cache": vc, "seq_lens": seq_lens,
                     "alibi_slopes": slopes})
