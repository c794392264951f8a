"""add and mul: residual connections (in place), a stride-0 broadcast row, strided
operands and odd sizes."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models.runtime import Tensor, ops

from .common import host, padded_view, rng_for, to_device, unsupported_guard
from .shapes import HIDDEN, PREFILL
from .sweep import describe

# name: (shape, layout): "plain", "inplace" (c is a), "broadcast" (b is a stride-0 row),
# "strided" (a is a padded view)
CASES = {
    "residual_prefill": ((PREFILL, HIDDEN), "inplace"),
    "decode": ((1, HIDDEN), "plain"),
    "broadcast_row": ((PREFILL, HIDDEN), "broadcast"),
    "strided": ((PREFILL, HIDDEN), "strided"),
    "batched_3d": ((2, PREFILL, HIDDEN), "plain"),
    "odd": ((7, 73), "plain"),
    # a [T, 1] view of a wider buffer (the gate or up half of a fused buffer with one
    # intermediate feature): strided rows of a single element
    "strided_last_dim_1": ((7, 1), "strided"),
}
OPS = {"add": (ops.add, np.add), "mul": (ops.mul, np.multiply)}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("case", list(CASES))
def test_op_elementwise(op, case, dtype, infini_device, verify):
    shape, layout = CASES[case]
    run_case(op, tuple(shape), layout, dtype, infini_device, verify,
             rng_for("elementwise", op, case, dtype))


@pytest.mark.parametrize("op", list(OPS))
def test_op_elementwise_sweep(op, sweep_case, dtype, infini_device, verify):
    p = sweep_case.params
    verify.param(**describe(sweep_case))
    run_case(op, tuple(p["shape"]), p["layout"], dtype, infini_device, verify,
             rng_for("elementwise-sweep", op, sweep_case.seed, sweep_case.name, dtype))


def run_case(op, shape, layout, dtype, infini_device, verify, rng):
    fn, ref = OPS[op]
    a = host(shape, dtype, rng)
    if layout == "broadcast":
        row = host(shape[-1:], dtype, rng)
        b = np.broadcast_to(row, shape)
        bt = to_device(row, infini_device, dtype).unsqueeze(0).expand(*shape)
    else:
        b = host(shape, dtype, rng)
        bt = to_device(b, infini_device, dtype)
    at = padded_view(a, infini_device, dtype) if layout == "strided" else \
        to_device(a, infini_device, dtype)
    ct = at if layout == "inplace" else Tensor.empty(shape, dtype, infini_device)
    verify.param(a=at.describe(), b=bt.describe(), c=ct.describe())
    with unsupported_guard(verify):
        fn(ct, at, bt)
    verify.close(ct.numpy(), ref(a, b), op, dtype)


@pytest.mark.parametrize("op", list(OPS))
def test_op_elementwise_rounding(op, dtype, infini_device, verify):
    """The property "correctly rounded" (IEEE 754 round to nearest even), not accuracy:
    with a, b already in the dtype, a+b and a*b are exact in float64, so the right answer
    is that value rounded once. Truncation or directed rounding is invisible to loose
    tolerances but biases every result and compounds across a model's layers."""
    fn, ref = OPS[op]
    rng = rng_for("rounding", op, dtype)
    a, b = host((64, 64), dtype, rng), host((64, 64), dtype, rng)
    out = Tensor.empty(a.shape, dtype, infini_device)
    with unsupported_guard(verify):
        fn(out, to_device(a, infini_device, dtype), to_device(b, infini_device, dtype))
    verify.rounded(out.numpy().astype(np.float64), ref(a, b), dtype)
