"""rms_norm: the input/post-attention/final norms, prefill and decode rows, 3-D, strided
rows, a long row, and half-precision activations with f32 weights."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models.runtime import DType, Tensor, ops

from .common import host, padded_view, rng_for, to_device, unsupported_guard
from .shapes import HIDDEN, INTER, PREFILL
from .sweep import describe

# name: (x shape, strided rows?, weight dtype: "same" or "f32", eps)
CASES = {
    "prefill": ((PREFILL, HIDDEN), False, "same", 1e-5),
    "decode": ((1, HIDDEN), False, "same", 1e-5),
    "batched_3d": ((2, PREFILL, HIDDEN), False, "same", 1e-6),
    "strided_rows": ((PREFILL, HIDDEN), True, "same", 1e-5),
    "long_row": ((3, 4100), False, "same", 1e-5),
    "odd": ((7, 72), False, "same", 1e-6),
    "f32_weight": ((PREFILL, INTER), False, "f32", 1e-5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_op_rms_norm(case, dtype, infini_device, verify):
    shape, strided, wdtype, eps = CASES[case]
    wdtype = dtype if wdtype == "same" else wdtype
    rng = rng_for("rms_norm", case, dtype)
    x = host(shape, dtype, rng, scale=3.0)
    w = 1.0 + 0.2 * host(shape[-1:], wdtype, rng)
    w = w.astype(np.float32).astype(DType.parse(wdtype).numpy).astype(np.float64)
    expected = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w
    xt = padded_view(x, infini_device, dtype) if strided else to_device(x, infini_device, dtype)
    yt = padded_view(np.zeros(shape), infini_device, dtype) if strided else \
        Tensor.empty(shape, dtype, infini_device)
    verify.param(x=xt.describe(), y=yt.describe(), w_dtype=wdtype, eps=eps)
    with unsupported_guard(verify):
        ops.rms_norm(yt, xt, to_device(w, infini_device, wdtype), eps)
    verify.close(yt.numpy(), expected, "rms_norm", dtype)


def test_op_rms_norm_sweep(sweep_case, dtype, infini_device, verify):
    p = sweep_case.params
    verify.param(**describe(sweep_case))
    shape, eps = tuple(p["shape"]), p["eps"]
    rng = rng_for("rms_norm-sweep", sweep_case.seed, sweep_case.name, dtype)
    x = host(shape, dtype, rng, scale=p["scale"])
    w = (1.0 + 0.2 * host(shape[-1:], dtype, rng)).astype(np.float32).astype(
        DType.parse(dtype).numpy).astype(np.float64)
    expected = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w
    yt = Tensor.empty(shape, dtype, infini_device)
    with unsupported_guard(verify):
        ops.rms_norm(yt, to_device(x, infini_device, dtype), to_device(w, infini_device, dtype),
                     eps)
    verify.close(yt.numpy(), expected, "rms_norm", dtype)
