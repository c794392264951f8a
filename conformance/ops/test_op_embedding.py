"""embedding: output[i] = weight[ids[i]], the token lookup. A copy, so it is checked bit for
bit (NaN payloads, -0, infinities and subnormals included), with int32 and int64 ids, on
SmolLM2's full vocabulary (the last row included), prefill/decode/batched ids, repeated ids,
odd sizes, and strided output and weight views (which the descriptor accepts)."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models.runtime import DType, Tensor, ops

from .common import host, padded_view, rng_for, to_device, unsupported_guard
from .shapes import HIDDEN, PREFILL, VOCAB
from .sweep import EDGES, WIDE, describe, generator

INDEX_DTYPES = ("i32", "i64")

# name: (ids shape, vocab, dim, layout): "plain"; "repeated" (few distinct ids);
# "special" (NaN, +-inf, -0 and subnormals in the table); "strided_out" (output rows are a
# padded view); "strided_weight" (the table is a column slice of a wider one)
CASES = {
    "prefill_full_vocab": ((PREFILL,), VOCAB, HIDDEN, "plain"),
    "decode": ((1,), VOCAB, HIDDEN, "plain"),
    "batched_2d": ((2, PREFILL), 1000, HIDDEN, "plain"),
    "repeated_ids": ((PREFILL,), 1000, HIDDEN, "repeated"),
    "odd": ((7,), 331, 73, "plain"),
    "special_values": ((64,), 64, 72, "special"),
    "strided_output": ((PREFILL,), 1000, HIDDEN, "strided_out"),
    "strided_weight": ((PREFILL,), 1000, HIDDEN, "strided_weight"),
}


@generator("test_op_embedding_sweep")
def _embedding(r, n):
    # the first and the last table row always among the ids (ids[0] = 0, ids[-1] = vocab - 1)
    cases = [{"ids": [1], "vocab": VOCAB, "dim": HIDDEN, "index": r.choice(INDEX_DTYPES)},
             {"ids": [r.choice((3, 7, 17))], "vocab": r.choice((2, 17, 33)),
              "dim": r.choice((1, 3, 15, 17)), "index": r.choice(INDEX_DTYPES)}]
    while len(cases) < n:
        ids = r.choice(([1], [r.choice(EDGES[1:])], [2, r.choice((3, 7, 17))]))
        cases.append({"ids": ids, "vocab": r.choice(EDGES[1:] + WIDE + (4099,)),
                      "dim": r.choice(EDGES + WIDE), "index": r.choice(INDEX_DTYPES)})
    return cases


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.dtype(f"u{a.dtype.itemsize}"))


def _table(vocab: int, dim: int, dtype: str, rng, special: bool) -> np.ndarray:
    w = host((vocab, dim), dtype, rng).astype(DType.parse(dtype).numpy)
    if special:
        np_dt = w.dtype
        tiny = np.array(2.0 ** -133 if dtype != "f16" else 2.0 ** -20, np.float32)
        vals = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], np.float32).astype(np_dt)
        w.flat[: vals.size] = vals
        w[1, :8] = np.arange(1, 9, dtype=np.float32).astype(np_dt) * tiny.astype(np_dt)
        bits = _bits(w)
        bits[2, 0] = bits[0, 0] | 1  # a NaN with another payload
        bits[2, 1] = bits[0, 0] | (1 << (8 * w.dtype.itemsize - 1))  # a negative NaN
    return w


def _ids(shape, vocab: int, rng, repeated: bool = False) -> np.ndarray:
    n = int(np.prod(shape))
    ids = rng.integers(0, min(vocab, 5) if repeated else vocab, n)
    ids[0], ids[-1] = 0, vocab - 1  # both ends of the table
    return ids.reshape(shape)


def run_case(ids_shape, vocab, dim, layout, index, dtype, device, verify, rng):
    w = _table(vocab, dim, dtype, rng, layout == "special")
    ids = _ids(ids_shape, vocab, rng, layout == "repeated")
    if layout == "special":
        ids.ravel()[:3] = [0, 1, 2]
    out_shape = tuple(ids_shape) + (dim,)
    if layout == "strided_weight":
        wide = np.concatenate([w, _table(vocab, 9, dtype, rng, False)], axis=1)
        wt = to_device(wide, device, dtype).narrow(1, 0, dim)
    else:
        wt = to_device(w, device, dtype)
    if layout == "strided_out":
        ot = padded_view(np.zeros(out_shape), device, dtype, pad=5)
    else:
        ot = Tensor.empty(out_shape, dtype, device)
    it = to_device(ids, device, index)
    verify.param(ids=it.describe(), weight=wt.describe(), output=ot.describe(),
                       vocab=vocab, layout=layout)
    with unsupported_guard(verify):
        ops.embedding(ot, it, wt)
    got, want = ot.numpy(), w[ids]
    verify.exact(got.astype(np.float64), want.astype(np.float64), standard="copy")
    # the same, bit for bit: -0, NaN payloads and signs, subnormals
    verify.exact(_bits(got), _bits(want), "output bits", standard="copy")
    if layout == "strided_out":
        whole = ot.as_strided(out_shape[:-1] + (dim + 5,), ot.strides).numpy()
        rest = whole[..., dim:].astype(np.float64)
        verify.exact(rest, np.zeros_like(rest), "output buffer outside the view",
                     standard="copy (untouched memory)")


@pytest.mark.parametrize("index", INDEX_DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_op_embedding(case, index, dtype, infini_device, verify):
    ids_shape, vocab, dim, layout = CASES[case]
    run_case(ids_shape, vocab, dim, layout, index, dtype, infini_device, verify,
             rng_for("embedding", case, dtype))


def test_op_embedding_sweep(sweep_case, dtype, infini_device, verify):
    p = sweep_case.params
    verify.param(**describe(sweep_case))
    run_case(tuple(p["ids"]), p["vocab"], p["dim"], "plain", p["index"], dtype, infini_device,
             verify, rng_for("embedding-sweep", sweep_case.seed, sweep_case.name, dtype))
