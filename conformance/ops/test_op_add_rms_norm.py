"""add_rms_norm: residual_out = a + b and y = rms_norm(residual_out) * weight in one call
(upstream's fused residual add + next norm). Both outputs are checked, on the decoder's
shapes (prefill and decode rows, 3-D), strided rows, the residual updated in place, f32
weights under half activations, a long row and small magnitudes where epsilon matters."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models.runtime import DType, Tensor, ops

from .common import host, padded_view, rng_for, to_device, unsupported_guard
from .shapes import HIDDEN, INTER, PREFILL
from .sweep import EDGES, WIDE, describe, generator

# name: (shape, layout, weight dtype ("same" or "f32"), eps, scale of a)
# layout: "plain"; "inplace" (residual_out is a: the residual stream updated where it lies,
# as a decoder does); "strided" (a, b, y and residual_out are row-padded views, the two
# inputs padded differently, the two outputs alike); "strided_out" (y and residual_out
# padded differently: each output must be written with its own strides)
CASES = {
    "prefill": ((PREFILL, HIDDEN), "plain", "same", 1e-5, 3.0),
    "decode": ((1, HIDDEN), "plain", "same", 1e-5, 3.0),
    "residual_inplace": ((PREFILL, HIDDEN), "inplace", "same", 1e-5, 3.0),
    "strided_rows": ((PREFILL, HIDDEN), "strided", "same", 1e-5, 3.0),
    "strided_outputs_distinct": ((PREFILL, HIDDEN), "strided_out", "same", 1e-5, 3.0),
    "batched_3d": ((2, PREFILL, HIDDEN), "plain", "same", 1e-6, 3.0),
    "batched_3d_strided": ((2, 9, HIDDEN), "strided", "same", 1e-6, 3.0),
    "long_row": ((3, 4100), "plain", "same", 1e-5, 3.0),
    "odd": ((7, 73), "plain", "same", 1e-6, 3.0),
    "f32_weight": ((PREFILL, INTER), "plain", "f32", 1e-5, 3.0),
    # mean((a + b)^2) ~ 1e-6, of the order of eps: a wrong or missing epsilon shows
    "small_magnitude": ((1, HIDDEN), "plain", "same", 1e-5, 1e-3),
}
# row padding of (a, b, y, residual_out) per strided layout
PADS = {"strided": (5, 3, 4, 4), "strided_out": (0, 0, 7, 2)}


@generator("test_op_add_rms_norm_sweep")
def _add_rms_norm(r, n):
    cases = [{"shape": [1, HIDDEN], "layout": "plain", "scale": 1e-3, "eps": 1e-5},
             {"shape": [3, r.choice((63, 65, 127, 129))], "layout": "inplace", "scale": 1.0,
              "eps": 1e-6},
             {"shape": [2, r.choice((3, 5)), r.choice((17, 33, 65))], "layout": "strided",
              "scale": 1.0, "eps": 1e-6}]
    while len(cases) < n:
        rows = r.choice(([1], [2], [5], [2, 3]))
        cases.append({"shape": rows + [r.choice(EDGES[4:] + WIDE + (4100,))],
                      "layout": r.choice(("plain", "inplace", "strided")),
                      "scale": r.choice((2e-3, 1.0, 30.0)), "eps": r.choice((1e-6, 1e-5))})
    return cases


def _rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    return x.astype(np.float32).astype(DType.parse(dtype).numpy).astype(np.float64)


def _row_padded(shape, pad: int, slack: int, dtype: str, device) -> tuple[Tensor, Tensor]:
    """A zeroed output view with rows `pad` elements wider than `shape[-1]`, in a buffer
    large enough for rows `slack` wider: an op that writes it with another tensor's strides
    writes wrong places of this buffer, not past its end (which would corrupt the heap
    and crash later, unrelated checks). Returns (view, whole buffer)."""
    rows, d = int(np.prod(shape[:-1])), shape[-1]
    buf = Tensor.zeros((rows * (d + max(pad, slack)),), dtype, device)
    strides, step = [1], d + pad
    for size in reversed(shape[:-1]):
        strides.insert(0, step)
        step *= size
    return buf.as_strided(shape, strides), buf


def run_case(shape, layout, wdtype, eps, scale, dtype, device, verify, rng):
    a = host(shape, dtype, rng, scale=scale)  # the residual stream
    b = host(shape, dtype, rng, scale=scale / 3)  # the sub-layer's output
    w = _rounded(1.0 + 0.2 * rng.standard_normal(shape[-1]), wdtype)
    s = a + b  # exact in float64
    expected_y = s / np.sqrt(np.mean(s * s, axis=-1, keepdims=True) + eps) * w
    whole = {}
    if layout in PADS:
        pa, pb, py, pr = PADS[layout]
        at = padded_view(a, device, dtype, pa) if pa else to_device(a, device, dtype)
        bt = padded_view(b, device, dtype, pb) if pb else to_device(b, device, dtype)
        yt, whole["y"] = _row_padded(shape, py, max(py, pr), dtype, device)
        rt, whole["residual_out"] = _row_padded(shape, pr, max(py, pr), dtype, device)
    else:
        at, bt = to_device(a, device, dtype), to_device(b, device, dtype)
        yt = Tensor.empty(shape, dtype, device)
        rt = at if layout == "inplace" else Tensor.empty(shape, dtype, device)
    verify.param(a=at.describe(), b=bt.describe(), y=yt.describe(),
                       residual_out=rt.describe(), w_dtype=wdtype, eps=eps, layout=layout)
    with unsupported_guard(verify):
        ops.add_rms_norm(yt, rt, at, bt, to_device(w, device, wdtype), eps)
    verify.close(rt.numpy(), s, "add_rms_norm", dtype, what="residual_out")
    verify.close(yt.numpy(), expected_y, "add_rms_norm", dtype, what="y")
    for name, buf in whole.items():  # the rest of each output buffer stays zero
        view = yt if name == "y" else rt
        rest = buf.numpy().astype(np.float64)
        idx = np.zeros(view.shape, dtype=np.int64)
        for dim, st in enumerate(view.strides):
            idx = idx + (np.arange(view.shape[dim]) * st).reshape(
                [-1 if i == dim else 1 for i in range(view.ndim)])
        rest[idx.ravel()] = 0
        verify.exact(rest, np.zeros_like(rest), f"{name} buffer outside the view",
                     standard="copy (untouched memory)")


@pytest.mark.parametrize("case", list(CASES))
def test_op_add_rms_norm(case, dtype, infini_device, verify):
    shape, layout, wdtype, eps, scale = CASES[case]
    run_case(shape, layout, dtype if wdtype == "same" else wdtype, eps, scale, dtype,
             infini_device, verify, rng_for("add_rms_norm", case, dtype))


def test_op_add_rms_norm_sweep(sweep_case, dtype, infini_device, verify):
    p = sweep_case.params
    verify.param(**describe(sweep_case))
    run_case(tuple(p["shape"]), p["layout"], dtype, p["eps"], p["scale"], dtype,
             infini_device, verify,
             rng_for("add_rms_norm-sweep", sweep_case.seed, sweep_case.name, dtype))
