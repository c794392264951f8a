"""swiglu: out = up * silu(gate), on the MLP's shapes, with up and gate as the two halves
of one fused gate_up buffer (strided), and odd sizes."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models.runtime import DType, Tensor, ops

from .common import host, rng_for, to_device, unsupported_guard
from .shapes import INTER, PREFILL
from .sweep import describe

CASES = {
    "prefill": ((PREFILL, INTER), False),
    "decode": ((1, INTER), False),
    "fused_gate_up": ((PREFILL, INTER), True),
    "batched_3d": ((2, 9, INTER), False),
    "odd": ((7, 200), False),
    # silu deep in its negative tail: gate in [-16, -11.5], where exp(-gate) exceeds the
    # f16 range (65504) although the output (about -1e-2 here) is an ordinary f16 value.
    "negative_tail": ((4, 256), False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_op_swiglu(case, dtype, infini_device, verify):
    shape, fused = CASES[case]
    rng = rng_for("swiglu", case, dtype)
    up, gate = host(shape, dtype, rng, 2.0), host(shape, dtype, rng, 2.0)
    if case == "negative_tail":
        to = DType.parse(dtype).numpy
        gate = rng.uniform(-16.0, -11.5, shape).astype(to).astype(np.float64)
        up = (np.sign(up) * rng.uniform(50.0, 200.0, shape)).astype(to).astype(np.float64)
    expected = up * gate / (1.0 + np.exp(-gate))
    if fused:
        buf = to_device(np.concatenate([gate, up], axis=-1), infini_device, dtype)
        gate_t, up_t = buf.narrow(-1, 0, shape[-1]), buf.narrow(-1, shape[-1], shape[-1])
    else:
        up_t, gate_t = to_device(up, infini_device, dtype), to_device(gate, infini_device, dtype)
    out = Tensor.empty(shape, dtype, infini_device)
    verify.info.update(up=up_t.describe(), gate=gate_t.describe())
    with unsupported_guard(verify):
        ops.swiglu(out, up_t, gate_t)
    verify.close(out.numpy(), expected, "swiglu", dtype)


def test_op_swiglu_sweep(sweep_case, dtype, infini_device, verify):
    shape = tuple(sweep_case.params["shape"])
    verify.info.update(describe(sweep_case))
    rng = rng_for("swiglu-sweep", sweep_case.seed, sweep_case.name, dtype)
    up, gate = host(shape, dtype, rng, 2.0), host(shape, dtype, rng, 2.0)
    out = Tensor.empty(shape, dtype, infini_device)
    with unsupported_guard(verify):
        ops.swiglu(out, to_device(up, infini_device, dtype), to_device(gate, infini_device, dtype))
    verify.close(out.numpy(), up * gate / (1.0 + np.exp(-gate)), "swiglu", dtype)
