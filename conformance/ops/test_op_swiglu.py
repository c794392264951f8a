"""swiglu: out = up * silu(gate), on the MLP's shapes, with up and gate as the two halves
of one fused gate_up buffer (strided), and odd sizes; and at ranks 1 and 4 (contiguous,
fused halves, interleaved inputs into a padded output), which upstream's NVIDIA kernel
(after 0.1.0) indexes as if they were 2-D or 3-D."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models.runtime import DType, Tensor, ops

from .common import host, layout_guard, rng_for, to_device, unsupported_guard
from .shapes import INTER, PREFILL
from .sweep import describe

BATCHED_4D = (2, 3, 9, 256)

# name: (shape, layout)
#   layout: "plain" (contiguous), "fused" (gate and up the two halves of one fused
#           [..., 2n] gate_up buffer), "strided" (gate and up interleaved in one [..., 2n]
#           buffer, last-dim stride 2; out a window of a buffer 5 wider, whose rest must stay)
CASES = {
    "prefill": ((PREFILL, INTER), "plain"),
    "decode": ((1, INTER), "plain"),
    "fused_gate_up": ((PREFILL, INTER), "fused"),
    "batched_3d": ((2, 9, INTER), "plain"),
    "odd": ((7, 200), "plain"),
    # silu deep in its negative tail: gate in [-16, -11.5], where exp(-gate) exceeds the
    # f16 range (65504) although the output (about -1e-2 here) is an ordinary f16 value.
    "negative_tail": ((4, 256), "plain"),
    # Ranks other than 2 and 3 (the elementwise framework takes any rank).
    "vector_1d": ((INTER,), "plain"),
    "vector_1d_strided": ((INTER,), "strided"),
    "batched_4d": (BATCHED_4D, "plain"),
    "batched_4d_fused": (BATCHED_4D, "fused"),
    "batched_4d_strided": (BATCHED_4D, "strided"),
}
OUT_PAD, OUTSIDE = 5, 0.5


def swiglu_layout_probe(ndim: int, dtype: str, device):
    """The smallest contiguous call of rank `ndim`: [1, ..., 1, 2]."""
    def probe():
        shape = (1,) * (ndim - 1) + (2,)
        ops.swiglu(Tensor.empty(shape, dtype, device), Tensor.zeros(shape, dtype, device),
                   Tensor.zeros(shape, dtype, device))
    return probe


@pytest.mark.parametrize("case", list(CASES))
def test_op_swiglu(case, dtype, infini_device, verify):
    shape, layout = CASES[case]
    n = shape[-1]
    new_rank = len(shape) not in (2, 3)
    rng = rng_for("swiglu", case, dtype)
    up, gate = host(shape, dtype, rng, 2.0), host(shape, dtype, rng, 2.0)
    if case == "negative_tail":
        to = DType.parse(dtype).numpy
        gate = rng.uniform(-16.0, -11.5, shape).astype(to).astype(np.float64)
        up = (np.sign(up) * rng.uniform(50.0, 200.0, shape)).astype(to).astype(np.float64)
    expected = up * gate / (1.0 + np.exp(-gate))
    if layout == "fused":
        buf = to_device(np.concatenate([gate, up], axis=-1), infini_device, dtype)
        gate_t, up_t = buf.narrow(-1, 0, n), buf.narrow(-1, n, n)
    elif layout == "strided":
        pair = np.stack([gate, up], axis=-1).reshape(shape[:-1] + (2 * n,))
        buf = to_device(pair, infini_device, dtype)
        strides = buf.strides[:-1] + (2,)
        gate_t = buf.as_strided(shape, strides, buf.offset)
        up_t = buf.as_strided(shape, strides, buf.offset + 1)
    else:
        up_t, gate_t = to_device(up, infini_device, dtype), to_device(gate, infini_device, dtype)
    wide = None
    if layout == "strided":
        # NaN where the output goes, so an element the op never writes cannot pass.
        host_wide = np.full(shape[:-1] + (n + OUT_PAD,), OUTSIDE)
        host_wide[..., :n] = np.nan
        wide = to_device(host_wide, infini_device, dtype)
        out = wide.narrow(-1, 0, n)
    elif new_rank:
        out = to_device(np.full(shape, np.nan), infini_device, dtype)
    else:
        out = Tensor.empty(shape, dtype, infini_device)
    verify.param(up=up_t.describe(), gate=gate_t.describe(), out=out.describe())
    guard = (layout_guard(verify, f"swiglu on {len(shape)}-D tensors",
                          swiglu_layout_probe(len(shape), dtype, infini_device))
             if new_rank else unsupported_guard(verify))
    with guard:
        ops.swiglu(out, up_t, gate_t)
    verify.close(out.numpy(), expected, "swiglu", dtype)
    if wide is not None:
        rest = wide.numpy().astype(np.float64)[..., n:]
        verify.exact(rest, np.full_like(rest, OUTSIDE), "buffer outside the output view",
                     standard="copy (untouched memory)")


def test_op_swiglu_sweep(sweep_case, dtype, infini_device, verify):
    shape = tuple(sweep_case.params["shape"])
    verify.param(**describe(sweep_case))
    rng = rng_for("swiglu-sweep", sweep_case.seed, sweep_case.name, dtype)
    up, gate = host(shape, dtype, rng, 2.0), host(shape, dtype, rng, 2.0)
    if len(shape) in (2, 3):
        out = Tensor.empty(shape, dtype, infini_device)
        guard = unsupported_guard(verify)
    else:  # other ranks: as the rank cases of test_op_swiglu
        out = to_device(np.full(shape, np.nan), infini_device, dtype)
        guard = layout_guard(verify, f"swiglu on {len(shape)}-D tensors",
                             swiglu_layout_probe(len(shape), dtype, infini_device))
    with guard:
        ops.swiglu(out, to_device(up, infini_device, dtype), to_device(gate, infini_device, dtype))
    verify.close(out.numpy(), up * gate / (1.0 + np.exp(-gate)), "swiglu", dtype)
