"""add and mul: residual connections (in place), a stride-0 broadcast row, strided
operands and odd sizes."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models.runtime import Tensor, ops

from .common import host, padded_view, rng_for, to_device, unsupported_guard
from .shapes import HIDDEN, PREFILL

# name: (shape, layout): "plain", "inplace" (c is a), "broadcast" (b is a stride-0 row),
# "strided" (a is a padded view)
CASES = {
    "residual_prefill": ((PREFILL, HIDDEN), "inplace"),
    "decode": ((1, HIDDEN), "plain"),
    "broadcast_row": ((PREFILL, HIDDEN), "broadcast"),
    "strided": ((PREFILL, HIDDEN), "strided"),
    "batched_3d": ((2, PREFILL, HIDDEN), "plain"),
    "odd": ((7, 73), "plain"),
}
OPS = {"add": (ops.add, np.add), "mul": (ops.mul, np.multiply)}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("case", list(CASES))
def test_op_elementwise(op, case, dtype, infini_device, verify):
    shape, layout = CASES[case]
    fn, ref = OPS[op]
    rng = rng_for("elementwise", op, case, dtype)
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
    verify.info.update(a=at.describe(), b=bt.describe(), c=ct.describe())
    with unsupported_guard(verify):
        fn(ct, at, bt)
    verify.close(ct.numpy(), ref(a, b), op, dtype)


@pytest.mark.parametrize("op", list(OPS))
def test_op_elementwise_rounding(op, dtype, infini_device, verify):
    """Results are rounded to nearest (IEEE default), not truncated: with a, b already in
    the dtype, a+b and a*b are exact in float64, so the right answer is that value rounded
    to nearest-even in the dtype. Truncation is invisible to loose tolerances but biases
    every result towards zero and compounds across a model's layers."""
    from infinilm_models.runtime import DType

    fn, ref = OPS[op]
    rng = rng_for("rounding", op, dtype)
    a, b = host((64, 64), dtype, rng), host((64, 64), dtype, rng)
    npd = DType.parse(dtype).numpy
    expected = ref(a, b).astype(np.float32).astype(npd).astype(np.float64)
    if dtype == "f32":
        expected = ref(a, b).astype(np.float32).astype(np.float64)
    out = Tensor.empty(a.shape, dtype, infini_device)
    with unsupported_guard(verify):
        fn(out, to_device(a, infini_device, dtype), to_device(b, infini_device, dtype))
    verify.exact(out.numpy().astype(np.float64), expected, "rounded result")
