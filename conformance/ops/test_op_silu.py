"""silu(x) = x * sigmoid(x), and silu_and_mul (vLLM's layout: input [..., 2d] holds gate
then up, output [..., d] = silu(gate) * up), on the MLP's shapes: prefill and decode rows,
3-D, odd sizes, in place, the gate half of a fused gate_up buffer (strided), a padded
output, and silu's negative tail where exp(-x) exceeds the f16 range although the result is
an ordinary (normal) f16 value."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models.runtime import DType, Tensor, ops

from .common import host, padded_view, rng_for, to_device, unsupported_guard
from .shapes import INTER, PREFILL
from .sweep import EDGES, WIDE, describe, generator


def silu_ref(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


# -- silu ---------------------------------------------------------------------------------

# name: (shape, layout, input): layout "plain", "inplace" (output is the input),
# "gate_half" (the input is the gate half of a fused [T, 2 x INTER] gate_up buffer),
# "strided_out" (the output is a row-padded view); input "normal" (scale 2), "wide"
# (scale 8) or "negative_tail" (x in [-12, -11.1]: exp(-x) > 65504, silu(x) ~ -1e-4)
SILU_CASES = {
    "prefill": ((PREFILL, INTER), "plain", "normal"),
    "decode": ((1, INTER), "plain", "normal"),
    "batched_3d": ((2, 9, INTER), "plain", "normal"),
    "odd": ((7, 200), "plain", "normal"),
    "inplace": ((PREFILL, INTER), "inplace", "normal"),
    "gate_half": ((PREFILL, INTER), "gate_half", "normal"),
    "strided_out": ((PREFILL, INTER), "strided_out", "normal"),
    "wide_range": ((9, 513), "plain", "wide"),
    "negative_tail": ((4, 256), "plain", "negative_tail"),
}


@generator("test_op_silu_sweep")
def _silu(r, n):
    cases = [{"shape": [1, INTER], "layout": "plain", "scale": 2.0},
             {"shape": [r.choice((3, 7)), r.choice((17, 33, 65, 73))], "layout": "gate_half",
              "scale": 2.0}]
    while len(cases) < n:
        cases.append({"shape": [r.choice((1, 2, 3, 7)), r.choice(EDGES + WIDE)],
                      "layout": r.choice(("plain", "inplace", "gate_half", "strided_out")),
                      "scale": r.choice((0.1, 2.0, 8.0))})
    return cases


def _silu_input(shape, kind: str, scale: float, dtype: str, rng) -> np.ndarray:
    if kind == "negative_tail":
        x = rng.uniform(-12.0, -11.1, shape).astype(np.float32)
        return x.astype(DType.parse(dtype).numpy).astype(np.float64)
    return host(shape, dtype, rng, scale)


def run_silu(shape, layout, x, dtype, device, verify):
    if layout == "gate_half":
        fused = np.concatenate([x, np.zeros(shape)], axis=-1)
        xt = to_device(fused, device, dtype).narrow(-1, 0, shape[-1])
    else:
        xt = to_device(x, device, dtype)
    if layout == "inplace":
        yt = xt
    elif layout == "strided_out":
        yt = padded_view(np.zeros(shape), device, dtype, pad=5)
    else:
        yt = Tensor.empty(shape, dtype, device)
    verify.param(input=xt.describe(), output=yt.describe(), layout=layout)
    with unsupported_guard(verify):
        ops.silu(yt, xt)
    verify.close(yt.numpy(), silu_ref(x), "silu", dtype)
    if layout == "strided_out":
        whole = yt.as_strided(shape[:-1] + (shape[-1] + 5,), yt.strides).numpy()
        rest = whole[..., shape[-1]:].astype(np.float64)
        verify.exact(rest, np.zeros_like(rest), "output buffer outside the view",
                     standard="copy (untouched memory)")


@pytest.mark.parametrize("case", list(SILU_CASES))
def test_op_silu(case, dtype, infini_device, verify):
    shape, layout, kind = SILU_CASES[case]
    rng = rng_for("silu", case, dtype)
    x = _silu_input(shape, kind, 8.0 if kind == "wide" else 2.0, dtype, rng)
    run_silu(shape, layout, x, dtype, infini_device, verify)


def test_op_silu_sweep(sweep_case, dtype, infini_device, verify):
    p = sweep_case.params
    verify.param(**describe(sweep_case))
    shape = tuple(p["shape"])
    rng = rng_for("silu-sweep", sweep_case.seed, sweep_case.name, dtype)
    run_silu(shape, p["layout"], host(shape, dtype, rng, p["scale"]), dtype, infini_device,
             verify)


# -- silu_and_mul -------------------------------------------------------------------------

# name: (output shape [..., d], layout, input): layout "plain" or "strided_rows" (the
# [..., 2d] input is a row-padded view); input "normal" or "negative_tail" (gate in
# [-16, -11.5] where exp(-gate) exceeds the f16 range, up of magnitude 50..200, so the
# output, about -1e-2, is an ordinary f16 value)
SILU_AND_MUL_CASES = {
    "prefill": ((PREFILL, INTER), "plain", "normal"),
    "decode": ((1, INTER), "plain", "normal"),
    "batched_3d": ((2, 9, INTER), "plain", "normal"),
    "odd": ((7, 101), "plain", "normal"),
    "hidden_1": ((5, 1), "plain", "normal"),
    "negative_tail": ((4, 256), "plain", "negative_tail"),
    "strided_rows": ((PREFILL, INTER), "strided_rows", "normal"),
}


@generator("test_op_silu_and_mul_sweep")
def _silu_and_mul(r, n):
    cases = [{"shape": [1, INTER]}, {"shape": [r.choice((3, 7)), r.choice((1, 3, 17, 65))]}]
    while len(cases) < n:
        rows = r.choice(([1], [2], [3], [7], [2, 3]))
        cases.append({"shape": rows + [r.choice(EDGES + WIDE)]})
    return cases


def run_silu_and_mul(shape, layout, gate, up, dtype, device, verify):
    x = np.concatenate([gate, up], axis=-1)  # [..., 2d]: gate | up
    xt = padded_view(x, device, dtype, pad=3) if layout == "strided_rows" else \
        to_device(x, device, dtype)
    yt = Tensor.empty(shape, dtype, device)
    verify.param(input=xt.describe(), output=yt.describe(), layout=layout)
    with unsupported_guard(verify):
        ops.silu_and_mul(yt, xt)
    verify.close(yt.numpy(), silu_ref(gate) * up, "silu_and_mul", dtype)


@pytest.mark.parametrize("case", list(SILU_AND_MUL_CASES))
def test_op_silu_and_mul(case, dtype, infini_device, verify):
    shape, layout, kind = SILU_AND_MUL_CASES[case]
    rng = rng_for("silu_and_mul", case, dtype)
    gate, up = host(shape, dtype, rng, 2.0), host(shape, dtype, rng, 2.0)
    if kind == "negative_tail":
        to = DType.parse(dtype).numpy
        gate = rng.uniform(-16.0, -11.5, shape).astype(np.float32).astype(to).astype(np.float64)
        up = (np.sign(up) * rng.uniform(50.0, 200.0, shape)).astype(np.float32).astype(
            to).astype(np.float64)
    run_silu_and_mul(shape, layout, gate, up, dtype, infini_device, verify)


def test_op_silu_and_mul_sweep(sweep_case, dtype, infini_device, verify):
    shape = tuple(sweep_case.params["shape"])
    verify.param(**describe(sweep_case))
    rng = rng_for("silu_and_mul-sweep", sweep_case.seed, sweep_case.name, dtype)
    run_silu_and_mul(shape, "plain", host(shape, dtype, rng, 2.0), host(shape, dtype, rng, 2.0),
                     dtype, infini_device, verify)
