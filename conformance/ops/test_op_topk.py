"""topk: the k largest (or smallest) values along a dim and their int32 indices. Exact.

The contract (include/infiniop/ops/topk.h, as infinicore's `topk` and torch.topk use it):
values and indices have the input's shape with `dim` of size k; sorted=True orders each row
largest (smallest) first, sorted=False returns the same selection in any order. Among tied
values any one is a correct pick, so no check compares indices with a fixed expectation.
A row is right when:

* every index is in [0, n) and no index is returned twice;
* each returned value is the input's value at its returned index (a copy: exact);
* the values are the k largest (smallest) as a multiset (exact), and, when sorted, in
  order (the expected values array itself, exact).

Together these say the index set is a top-k set, whatever the ties.
"""

from __future__ import annotations

import numpy as np
import pytest

from conformance import judge
from infinilm_models.runtime import DType, Tensor, ops

from .common import padded_view, rng_for, to_device, unsupported_guard
from .shapes import VOCAB
from .sweep import EDGES, WIDE, describe, generator


def distinct(n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct values with 8 significant bits and exponents in [-6, 9]: exact in bf16,
    f16 and f32, so no rounding makes a tie. Random signs, random order."""
    if n > 2048:
        raise ValueError(f"distinct: at most 2048 values, asked {n}")
    m = np.arange(n)
    mag = (1.0 + (m % 128) / 128.0) * 2.0 ** (m // 128 - 6)
    return rng.permutation(mag * rng.choice((-1.0, 1.0), size=n))


def data(kind: str, shape: tuple[int, ...], dim: int, dtype: str, rng: np.random.Generator,
         scale: float = 1.0) -> np.ndarray:
    """An input in float64, exactly representable in `dtype`, its rows along `dim`.

    distinct: no ties; ties: small integers (ties everywhere, across the k boundary too);
    equal: one value; masked: distinct with about half of each row -inf (masked logits);
    normal: N(0, 4^2) rounded to the dtype (the vocab cases; ties where the dtype makes them).
    """
    n = shape[dim]
    rows = int(np.prod(shape)) // n
    if kind == "distinct":
        r = np.stack([distinct(n, rng) for _ in range(rows)]) * scale
    elif kind == "ties":
        r = rng.integers(-3, 4, size=(rows, n)).astype(np.float64) * scale
    elif kind == "equal":
        r = np.full((rows, n), 1.5 * scale)
    elif kind == "masked":
        r = np.stack([distinct(n, rng) for _ in range(rows)]) * scale
        r[rng.random((rows, n)) < 0.5] = -np.inf
    elif kind == "normal":
        r = (rng.standard_normal((rows, n)) * 4 * scale).astype(np.float32)
        r = r.astype(DType.parse(dtype).numpy).astype(np.float64)
    else:
        raise KeyError(kind)
    rounded = r.astype(np.float32).astype(DType.parse(dtype).numpy).astype(np.float64)
    if not np.array_equal(rounded, r):
        raise AssertionError(f"topk input ({kind}, scale {scale}) not exact in {dtype}")
    moved = [s for d, s in enumerate(shape) if d != dim] + [n]
    return np.moveaxis(r.reshape(moved), -1, dim)


# name: (shape, k, dim, largest, sorted, data, layout)
CASES = {
    # The sampling use: the top of SmolLM2's vocabulary, one decode row and a batch of 4.
    "vocab_top50": ((1, VOCAB), 50, -1, True, True, "normal", "plain"),
    "vocab_k1": ((1, VOCAB), 1, -1, True, True, "normal", "plain"),
    "vocab_b4_top40_unsorted": ((4, VOCAB), 40, -1, True, False, "normal", "plain"),
    "vocab_smallest5": ((1, VOCAB), 5, -1, False, True, "normal", "plain"),
    # Row sizes around 16/32/64, k = 1 and k = n, largest and smallest, sorted and not.
    "n16_k_n": ((3, 16), 16, -1, True, True, "distinct", "plain"),
    "n17_k_n_unsorted": ((3, 17), 17, -1, True, False, "distinct", "plain"),
    "n31_k1_smallest": ((5, 31), 1, -1, False, True, "distinct", "plain"),
    "n32_k5_smallest": ((2, 32), 5, -1, False, True, "distinct", "plain"),
    "n33_k1": ((4, 33), 1, -1, True, False, "distinct", "plain"),
    "n63_k7_unsorted": ((2, 63), 7, -1, True, False, "distinct", "plain"),
    "n64_k_n_smallest_unsorted": ((2, 64), 64, -1, False, False, "distinct", "plain"),
    "n65_k2": ((3, 65), 2, -1, True, True, "distinct", "plain"),
    # The CPU switches from partial_sort to nth_element(+sort) above k * 64 = n.
    "n1024_k16": ((2, 1024), 16, -1, True, True, "distinct", "plain"),
    "n1024_k17_unsorted": ((2, 1024), 17, -1, False, False, "distinct", "plain"),
    # Ties: any tied element is a right pick, the multiset of values is exact.
    "ties_n64_k10": ((3, 64), 10, -1, True, True, "ties", "plain"),
    "ties_n64_k10_smallest_unsorted": ((3, 64), 10, -1, False, False, "ties", "plain"),
    "all_equal_n33_k5": ((2, 33), 5, -1, True, True, "equal", "plain"),
    "masked_neg_inf_k40": ((2, 64), 40, -1, True, True, "masked", "plain"),
    # Another dim than the last (rows strided by the other dims).
    "dim0": ((64, 5), 3, 0, True, True, "distinct", "plain"),
    "dim1_of_3d_smallest": ((4, 33, 6), 4, 1, False, True, "distinct", "plain"),
    "dim0_ties_unsorted": ((32, 3), 6, 0, True, False, "ties", "plain"),
    # Rows of a wider buffer (a narrowed view), as upstream's own test strides them.
    "strided_rows": ((3, 64), 8, -1, True, True, "distinct", "strided"),
}


def run_topk(verify, device, x: np.ndarray, dtype: str, k: int, dim: int, largest: bool,
             sorted_: bool, layout: str = "plain") -> tuple[np.ndarray, np.ndarray]:
    """InfiniCore's (values, indices) as float64 / int64 arrays."""
    shape = tuple(k if d == dim % x.ndim else s for d, s in enumerate(x.shape))
    inp = padded_view(x, device, dtype) if layout == "strided" else to_device(x, device, dtype)
    values = Tensor.empty(shape, dtype, device)
    indices = Tensor.empty(shape, "i32", device)
    with unsupported_guard(verify):
        ops.topk(values, indices, inp, k, dim, largest, sorted_)
    return values.numpy().astype(np.float64), indices.numpy().astype(np.int64)


def check_topk(verify, x: np.ndarray, values: np.ndarray, indices: np.ndarray, k: int,
               dim: int, largest: bool, sorted_: bool) -> None:
    dim %= x.ndim
    n = x.shape[dim]
    xr = np.moveaxis(x, dim, -1).reshape(-1, n)
    vr = np.moveaxis(values, dim, -1).reshape(-1, k)
    ir = np.moveaxis(indices, dim, -1).reshape(-1, k)
    # In range and distinct (a repeated index can point at a right value and pass the rest).
    clipped = np.clip(ir, 0, n - 1)
    verify.keep(judge.exact(ir, clipped, f"indices in [0, {n})", standard="integer output"))
    distinct_per_row = np.array([len(set(row.tolist())) for row in ir])
    verify.keep(judge.exact(distinct_per_row, np.full(len(ir), k),
                            "distinct indices per row", standard="integer output"))
    # Each value is the input's value at its index: a copy.
    at = np.take_along_axis(xr, clipped, axis=-1)
    verify.keep(judge.exact(vr, at, "values at the returned indices", standard="copy"))
    # The right values: the k largest (smallest), ties as a multiset.
    best = -np.sort(-xr, axis=-1)[:, :k] if largest else np.sort(xr, axis=-1)[:, :k]
    which = "largest" if largest else "smallest"
    # standard "copy": a copy of -inf (a masked logit) is a right copy
    if sorted_:
        expected = np.moveaxis(best.reshape(np.moveaxis(values, dim, -1).shape), -1, dim)
        verify.exact(values, expected, f"values (the {k} {which}, in order)", standard="copy")
    else:
        verify.keep(judge.exact(np.sort(vr, axis=-1), np.sort(best, axis=-1),
                                f"values (the {k} {which}, as a multiset)", standard="copy"))


@pytest.mark.parametrize("case", list(CASES))
def test_op_topk(case, dtype, infini_device, verify):
    shape, k, dim, largest, sorted_, kind, layout = CASES[case]
    x = data(kind, shape, dim % len(shape), dtype, rng_for("topk", case, dtype))
    verify.param(shape=list(shape), k=k, dim=dim, largest=largest, sorted=sorted_,
                       data=kind, layout=layout)
    values, indices = run_topk(verify, infini_device, x, dtype, k, dim, largest, sorted_,
                               layout)
    check_topk(verify, x, values, indices, k, dim, largest, sorted_)


@generator("test_op_topk_sweep")
def _topk(r, n: int) -> list[dict]:
    """Row sizes on both sides of 16/32/64 and tile edges; k = 1, k = n and k across the
    CPU's k * 64 = n switch; the extreme at the first, last and a middle index; ties;
    small (f16-subnormal) and large magnitudes; the last dim and the first; strided rows."""
    def case(n_, k, dim="last", largest=True, sorted_=True, data="distinct", where="none",
             scale=1.0, layout="plain", rows=2):
        shape = [rows, n_] if dim == "last" else [n_, rows]
        return {"shape": shape, "k": k, "dim": dim, "largest": largest, "sorted": sorted_,
                "data": data, "where": where, "scale": scale, "layout": layout}

    cases = [case(r.choice((15, 17, 31, 33)), 1, where="last"),
             case(r.choice((16, 63, 65)), None, largest=False, where="first"),  # k = n
             case(r.choice((127, 129, 255)), None, sorted_=False, where="middle"),
             case(r.choice((33, 64, 65)), r.choice((3, 9)), data="ties", largest=False),
             case(r.choice((31, 64)), r.choice((1, 4)), dim="first", rows=3),
             case(r.choice((513, 1023, 1025)), 0, where="last"),  # k = n // 64 (+1)
             case(r.choice((64, 65)), 5, scale=2.0 ** -11, layout="strided"),
             case(r.choice((32, 33)), 6, scale=16.0, sorted_=False, where="first")]
    while len(cases) < n:
        size = r.choice(EDGES + WIDE)
        k = r.choice((1, None, r.randint(1, size)))
        cases.append(case(size, k, dim=r.choice(("last", "last", "first")),
                          largest=r.choice((True, False)), sorted_=r.choice((True, False)),
                          data=r.choice(("distinct", "distinct", "ties")),
                          where=r.choice(("none", "first", "last", "middle")),
                          scale=r.choice((2.0 ** -11, 1.0, 16.0)),
                          layout=r.choice(("plain", "plain", "strided")),
                          rows=r.choice((1, 2, 3, 5))))
    for c in cases:  # None: k = n; 0: at the partial_sort switch, n // 64 or one more
        size = c["shape"][1] if c["dim"] == "last" else c["shape"][0]
        if c["k"] is None:
            c["k"] = size
        elif c["k"] == 0:
            c["k"] = max(1, size // 64) + r.choice((0, 1))
    return cases


def test_op_topk_sweep(sweep_case, dtype, infini_device, verify):
    p = sweep_case.params
    verify.param(**describe(sweep_case))
    rng = rng_for("topk-sweep", sweep_case.seed, sweep_case.name, dtype)
    dim = 1 if p["dim"] == "last" else 0
    x = data(p["data"], tuple(p["shape"]), dim, dtype, rng, p["scale"])
    n = x.shape[dim]
    if p["where"] != "none":  # the row's extreme (for the direction asked) at one position
        pos = {"first": 0, "last": n - 1, "middle": n // 2}[p["where"]]
        xm = np.moveaxis(x, dim, -1)
        extreme = np.abs(xm).max() * 2 if p["largest"] else -np.abs(xm).max() * 2
        xm[..., pos] = extreme  # a power-of-two multiple of a representable value
    values, indices = run_topk(verify, infini_device, x, dtype, p["k"], dim, p["largest"],
                               p["sorted"], p["layout"])
    check_topk(verify, x, values, indices, p["k"], dim, p["largest"], p["sorted"])
