"""rope: GPT-NeoX (HF LLaMA's rotate_half) and GPT-J, on q and on k sliced out of a fused
QKV buffer, prefill and decode positions, flattened batches, in place, odd head_dim; and
the 4-D batch layout upstream added after 0.1.0 ([batch, seq, heads, head_dim] with
[batch, seq] positions, one run per batch row, or shared [seq] ones), which 0.1.0
refuses with BAD_TENSOR_SHAPE (`unsupported` there)."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models.runtime import Tensor, ops

from .common import host, layout_guard, rng_for, to_device, unsupported_guard
from .references.rope import MAX_POS, reference, tables
from .shapes import HEAD_DIM, HEADS, KV_HEADS, PREFILL
from .sweep import describe

# name: (tokens, heads, head_dim, positions kind, layout)
#   positions: "prefill" 0..n-1, "decode" [pos], "batch2" two sequences flattened
#   layout: "contiguous", "qkv_slice" (k inside a fused [tokens, q+k+v heads, d] buffer),
#           "inplace" (y is x)
CASES = {
    "q_prefill": (PREFILL, HEADS, HEAD_DIM, "prefill", "contiguous"),
    "k_prefill_qkv_slice": (PREFILL, KV_HEADS, HEAD_DIM, "prefill", "qkv_slice"),
    "q_decode": (1, HEADS, HEAD_DIM, "decode", "contiguous"),
    "batch2_flattened": (2 * 8, KV_HEADS, HEAD_DIM, "batch2", "contiguous"),
    "inplace": (PREFILL, HEADS, HEAD_DIM, "prefill", "inplace"),
    "odd_head_dim": (5, 3, 24, "prefill", "contiguous"),
}


def positions(kind: str, tokens: int) -> np.ndarray:
    if kind == "decode":
        return np.array([700], dtype=np.int32)
    if kind == "batch2":
        return np.concatenate([np.arange(8), np.arange(100, 108)]).astype(np.int32)
    return np.arange(tokens, dtype=np.int32)


@pytest.mark.parametrize("algo", ["gpt_neox", "gpt_j"])
@pytest.mark.parametrize("case", list(CASES))
def test_op_rope(case, algo, dtype, infini_device, verify):
    tokens, heads, d, pos_kind, layout = CASES[case]
    rng = rng_for("rope", case, algo, dtype)
    x = host((tokens, heads, d), dtype, rng)
    pos = positions(pos_kind, tokens)
    sin, cos = tables(d, dtype)
    expected = reference(x, pos, sin, cos, algo)
    if layout == "qkv_slice":
        fused = np.zeros((tokens, HEADS + 2 * KV_HEADS, d))
        fused[:, HEADS:HEADS + heads] = x
        buf = to_device(fused, infini_device, dtype)
        xt = buf.narrow(1, HEADS, heads)
        yt = xt  # the model rotates k in place inside the fused buffer
    else:
        xt = to_device(x, infini_device, dtype)
        yt = xt if layout == "inplace" else Tensor.empty(x.shape, dtype, infini_device)
    verify.param(x=xt.describe(), y=yt.describe(), positions=pos_kind, algo=algo)
    with unsupported_guard(verify):
        ops.rope(yt, xt, to_device(pos, infini_device, "i32"),
                 to_device(sin, infini_device, dtype), to_device(cos, infini_device, dtype), algo)
    verify.close(yt.numpy(), expected, "rope", dtype)
    if layout == "qkv_slice":
        rest = buf.numpy().astype(np.float64)
        rest[:, HEADS:HEADS + heads] = 0
        verify.exact(rest, np.zeros_like(rest), "fused buffer outside the k slice",
                     standard="copy (untouched memory)")


# 4-D: name: (batch, seq, heads, head_dim, positions kind, layout)
#   positions: "rows" a different run per batch row ([batch, seq]: rows that continue
#              different cached lengths), "decode" one token per row at scattered positions
#              ([batch, 1], the last table row among them), "shared" one run for every row
#              (1-D [seq]), "rows_strided" as "rows" but pos_ids a narrowed view of a wider
#              [batch, seq + 3] matrix (row stride seq + 3)
#   layout: "contiguous"; "qkv_slice" (k inside a fused [batch, seq, q+k+v heads, d] buffer,
#           in place); "cache_view" (y a window of a longer [batch, max_seq, heads, d]
#           cache, x contiguous); "heads_major" (x a [batch, heads, seq, d] buffer seen as
#           [batch, seq, heads, d], y contiguous)
BATCHED_CASES = {
    "batch4d_prefill": (3, 9, HEADS, HEAD_DIM, "rows", "contiguous"),
    "batch4d_decode": (4, 1, HEADS, HEAD_DIM, "decode", "contiguous"),
    "batch4d_shared_pos": (2, 5, KV_HEADS, HEAD_DIM, "shared", "contiguous"),
    "batch4d_qkv_slice": (2, 5, KV_HEADS, HEAD_DIM, "rows", "qkv_slice"),
    "batch4d_cache_view": (3, 4, KV_HEADS, HEAD_DIM, "rows", "cache_view"),
    "batch4d_heads_major": (2, 6, HEADS, HEAD_DIM, "rows", "heads_major"),
    "batch4d_pos_strided": (2, 5, KV_HEADS, HEAD_DIM, "rows_strided", "contiguous"),
}
ROW_STARTS = (0, 37, 500, 911)
ROW_DECODE = (700, 3, MAX_POS - 1, 64)
CACHE_PAD, CACHE_AT, POS_PAD = 7, 2, 3


def batched_positions(kind: str, batch: int, seq: int) -> np.ndarray:
    if kind == "decode":
        return np.array(ROW_DECODE[:batch], dtype=np.int32).reshape(batch, 1)
    if kind == "shared":
        return (100 + np.arange(seq)).astype(np.int32)
    return (np.array(ROW_STARTS[:batch])[:, None] + np.arange(seq)).astype(np.int32)


def rope_layout_probe(pos_ndim: int, dtype: str, device, algo: str):
    """The smallest contiguous 4-D call: [1, 1, 1, 2] x/y with `pos_ndim`-D positions."""
    def probe():
        table = Tensor.zeros((1, 1), dtype, device)
        ops.rope(Tensor.empty((1, 1, 1, 2), dtype, device),
                 Tensor.zeros((1, 1, 1, 2), dtype, device),
                 Tensor.zeros((1,) * pos_ndim, "i32", device), table, table, algo)
    return probe


@pytest.mark.parametrize("algo", ["gpt_neox", "gpt_j"])
@pytest.mark.parametrize("case", list(BATCHED_CASES))
def test_op_rope_batched(case, algo, dtype, infini_device, verify):
    batch, seq, heads, d, pos_kind, layout = BATCHED_CASES[case]
    rng = rng_for("rope-batched", case, algo, dtype)
    x = host((batch, seq, heads, d), dtype, rng)
    pos = batched_positions(pos_kind, batch, seq)
    sin, cos = tables(d, dtype)
    rows = np.broadcast_to(pos, (batch, seq)).reshape(-1)
    expected = reference(x.reshape(-1, heads, d), rows, sin, cos, algo).reshape(x.shape)
    buf = None
    if layout == "qkv_slice":
        fused = np.zeros((batch, seq, HEADS + 2 * KV_HEADS, d))
        fused[:, :, HEADS:HEADS + heads] = x
        buf = to_device(fused, infini_device, dtype)
        xt = yt = buf.narrow(2, HEADS, heads)
    elif layout == "cache_view":
        xt = to_device(x, infini_device, dtype)
        buf = to_device(np.full((batch, seq + CACHE_PAD, heads, d), 0.5), infini_device, dtype)
        yt = buf.narrow(1, CACHE_AT, seq)
    elif layout == "heads_major":
        xt = to_device(np.ascontiguousarray(x.transpose(0, 2, 1, 3)), infini_device,
                       dtype).permute(0, 2, 1, 3)
        yt = Tensor.empty(x.shape, dtype, infini_device)
    else:
        xt = to_device(x, infini_device, dtype)
        yt = Tensor.empty(x.shape, dtype, infini_device)
    if pos_kind == "rows_strided":
        wide = np.zeros((batch, seq + POS_PAD), dtype=np.int32)
        wide[:, :seq] = pos
        pt = Tensor.from_numpy(wide, infini_device, "i32").narrow(1, 0, seq)
    else:
        pt = to_device(pos, infini_device, "i32")
    verify.param(x=xt.describe(), y=yt.describe(), pos_ids=pt.describe(),
                       positions=pos.tolist(), algo=algo)
    with layout_guard(verify, f"rope on 4-D x/y with {pos.ndim}-D pos_ids",
                      rope_layout_probe(pos.ndim, dtype, infini_device, algo)):
        ops.rope(yt, xt, pt, to_device(sin, infini_device, dtype),
                 to_device(cos, infini_device, dtype), algo)
    verify.close(yt.numpy(), expected, "rope", dtype)
    if layout == "qkv_slice":
        rest = buf.numpy().astype(np.float64)
        rest[:, :, HEADS:HEADS + heads] = 0
        verify.exact(rest, np.zeros_like(rest), "fused buffer outside the k slice",
                     standard="copy (untouched memory)")
    elif layout == "cache_view":
        rest = buf.numpy().astype(np.float64)
        rest[:, CACHE_AT:CACHE_AT + seq] = 0.5
        verify.exact(rest, np.full_like(rest, 0.5), "cache outside the written window",
                     standard="copy (untouched memory)")


def test_op_rope_sweep(sweep_case, dtype, infini_device, verify):
    """A case with "batch" is 4-D: x [batch, tokens, heads, head_dim], "pos" one list of
    positions per batch row."""
    p = sweep_case.params
    verify.param(**describe(sweep_case))
    tokens, heads, d, algo = p["tokens"], p["heads"], p["head_dim"], p["algo"]
    rng = rng_for("rope-sweep", sweep_case.seed, sweep_case.name, dtype)
    lead = (p["batch"], tokens) if p.get("batch") else (tokens,)
    x = host(lead + (heads, d), dtype, rng)
    pos = np.array(p["pos"], dtype=np.int32)
    sin, cos = tables(d, dtype)
    y = Tensor.empty(x.shape, dtype, infini_device)
    guard = (layout_guard(verify, f"rope on 4-D x/y with {pos.ndim}-D pos_ids",
                          rope_layout_probe(pos.ndim, dtype, infini_device, algo))
             if x.ndim == 4 else unsupported_guard(verify))
    with guard:
        ops.rope(y, to_device(x, infini_device, dtype), to_device(pos, infini_device, "i32"),
                 to_device(sin, infini_device, dtype), to_device(cos, infini_device, dtype), algo)
    expected = reference(x.reshape(-1, heads, d), pos.reshape(-1), sin, cos, algo)
    verify.close(y.numpy(), expected.reshape(x.shape), "rope", dtype)
