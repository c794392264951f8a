"""paged_attention_prefill (upstream InfiniCore; NVIDIA-class backends only): causal
attention of a packed batch of new query tokens over a block-table (paged) KV cache that
already holds them (paged_caching runs first) and each sequence's history.

    out, q            [total_q_tokens, heads, head_dim]  f16/bf16 (f32 is refused); head_dim
                      in {64, 128, 192, 256, 576}; last dim contiguous
    k_cache, v_cache  [num_blocks, kv_heads, block_size, head_dim]  last dim contiguous
    block_tables      [num_seqs, max_blocks_per_seq]  last dim contiguous } one index
    seq_lens          [num_seqs]: total KV tokens, the new ones included  } dtype: i32 or
    cum_seq_lens_q    [num_seqs + 1]: prefix sum of the new tokens         } i64
    alibi_slopes      [heads] f32, or NULL (the LLaMA path)
    scale             float (1 / sqrt(head_dim) here)

Sequence s owns q rows cum[s]..cum[s+1]-1; its j-th new token sits at position
history + j, history = seq_lens[s] - (cum[s+1] - cum[s]), and sees keys 0..history + j.
"""

from __future__ import annotations

import numpy as np
import pytest

from .common import host, rng_for, to_device, unsupported_guard
from .paged_layout import PreparedAttention, alibi_slopes, attend, make_layout, pools
from .shapes import HEAD_DIM, HEADS, KV_HEADS, PREFILL

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
    bs = k_cache.shape[2]
    out = np.empty(q.shape[:2] + (v_cache.shape[3],))
    for s in range(len(seq_lens)):
        lo, hi, n = int(cum_seq_lens_q[s]), int(cum_seq_lens_q[s + 1]), int(seq_lens[s])
        blocks = np.asarray(block_tables[s, : -(-n // bs)], dtype=np.int64)
        keys = k_cache[blocks].transpose(0, 2, 1, 3).reshape(-1, *k_cache.shape[1::2])[:n]
        vals = v_cache[blocks].transpose(0, 2, 1, 3).reshape(-1, *v_cache.shape[1::2])[:n]
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


@pytest.mark.parametrize("case", list(CASES))
def test_op_paged_attention_prefill(case, dtype, infini_device, verify):
    p = prepare(case, dtype, infini_device)
    c = CASES[case]
    verify.param(case=case, q=p.args[1].describe(), k_cache=p.args[2].describe(),
                       block_tables=p.layout.block_tables.tolist(), q_lens=list(c["q_lens"]),
                       history=list(c["history"]), alibi=c["alibi"])
    with unsupported_guard(verify):
        p.call()
    verify.close(p.out.numpy(), p.expected, "paged_attention_prefill", dtype)
