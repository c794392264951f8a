"""causal_softmax: attention probabilities for prefill (square mask), decode (one row over
the cache, also over several hundred and a few thousand keys), chunked prefill after a
cache (bottom-right mask), rows longer than a 1024-wide block, and a narrowed (strided)
score buffer."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models.runtime import DType, Tensor, ops

from .common import host, rng_for, to_device, unsupported_guard
from .references.causal_softmax import reference, reference_mask
from .shapes import DECODE_POS, HEADS, LONG_KEYS, PREFILL
from .sweep import describe

# name: (shape, strided?) ; shape [batch(heads), q_len, kv_len] or 2-D [q_len, kv_len]
CASES = {
    "prefill": ((HEADS, PREFILL, PREFILL), False),
    "decode": ((HEADS, 1, DECODE_POS + 1), False),
    "chunk_after_cache": ((HEADS, 5, 40), False),
    "long_rows": ((2, 3, 1100), False),
    # decode (one query row per head) over a long cache: the model's decode softmax
    **{f"decode_{n}": ((HEADS, 1, n), False) for n in LONG_KEYS},
    "two_dim": ((PREFILL, PREFILL), False),
    "strided_scores": ((HEADS, 4, 70), True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_op_causal_softmax(case, dtype, infini_device, verify):
    shape, strided = CASES[case]
    x = host(shape, dtype, rng_for("causal_softmax", case, dtype), scale=4.0)
    expected = reference(x)
    if strided:  # scores inside a [heads, q, 128] buffer, as a narrowed cache-length view
        big = np.zeros(shape[:-1] + (128,))
        big[..., : shape[-1]] = x
        xt = to_device(big, infini_device, dtype).narrow(-1, 0, shape[-1])
    else:
        xt = to_device(x, infini_device, dtype)
    yt = xt if strided else Tensor.empty(shape, dtype, infini_device)  # in place when strided
    verify.param(x=xt.describe(), inplace=strided)
    with unsupported_guard(verify):
        ops.causal_softmax(yt, xt)
    got = yt.numpy().astype(np.float64)
    # Masked (future) positions must carry no probability mass in any dtype: a leak there
    # is a wrong mask, whatever the tolerance of the visible positions. An exact 0 rather
    # than a subnormal is only a finding.
    verify.masked(got, reference_mask(shape), dtype)
    verify.close(got, expected, "causal_softmax", dtype)


def test_op_causal_softmax_sweep(sweep_case, dtype, infini_device, verify):
    shape, peak = tuple(sweep_case.params["shape"]), sweep_case.params.get("peak")
    verify.param(**describe(sweep_case))
    x = host(shape, dtype, rng_for("softmax-sweep", sweep_case.seed, sweep_case.name, dtype),
             scale=2.0)
    if peak is not None:
        q, k = shape[-2:]
        for i in range(q):
            last = k - q + i  # the newest key row i may see
            col = {"newest": last, "oldest": 0, "middle": last // 2}[peak]
            x[..., i, col] += 6.0
        # the inputs both sides get are the values rounded to the dtype
        x = x.astype(np.float32).astype(DType.parse(dtype).numpy).astype(np.float64)
    y = Tensor.empty(shape, dtype, infini_device)
    with unsupported_guard(verify):
        ops.causal_softmax(y, to_device(x, infini_device, dtype))
    got = y.numpy().astype(np.float64)
    verify.masked(got, reference_mask(shape), dtype)
    verify.close(got, reference(x), "causal_softmax", dtype)
