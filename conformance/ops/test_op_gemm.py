"""gemm: every matrix product of the model (projections, attention scores and values,
lm_head), with transposed weights and cache views as the model passes them."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models.runtime import Tensor, ops

from .common import host, rng_for, to_device, unsupported_guard
from .shapes import (
    CACHE_LEN,
    DECODE_POS,
    GROUP,
    HEAD_DIM,
    HIDDEN,
    INTER,
    KV_HEADS,
    LONG_KEYS,
    PREFILL,
    VOCAB,
)
from .sweep import describe

# name: (batch or None, M, K, N, b layout, alpha, beta)
#   b layout "wT": b is the transposed view of a [N, K] weight (x @ W.T, column-major b)
#            "row": b stored [K, N];  "cacheT": K^T as a view of a longer KV cache
#            "bcast": b has batch 1 and broadcasts over a's batch
CASES = {
    "q_proj_prefill": (None, PREFILL, HIDDEN, HIDDEN, "wT", 1.0, 0.0),
    "qkv_decode": (None, 1, HIDDEN, HIDDEN + 2 * KV_HEADS * HEAD_DIM, "wT", 1.0, 0.0),
    "o_proj_decode": (None, 1, HIDDEN, HIDDEN, "wT", 1.0, 0.0),
    "gate_up_decode": (None, 1, HIDDEN, 2 * INTER, "wT", 1.0, 0.0),
    "down_proj_decode": (None, 1, INTER, HIDDEN, "wT", 1.0, 0.0),
    "residual_decode": (None, 1, INTER, HIDDEN, "wT", 1.0, 1.0),
    "lm_head_decode": (None, 1, HIDDEN, VOCAB, "wT", 1.0, 0.0),
    "up_proj_prefill": (None, PREFILL, HIDDEN, INTER, "wT", 1.0, 0.0),
    "down_proj_prefill": (None, PREFILL, INTER, HIDDEN, "wT", 1.0, 0.0),
    "lm_head_tied": (None, 2, HIDDEN, VOCAB, "wT", 1.0, 0.0),
    "odd_row_major": (None, 7, 72, 200, "row", 1.0, 0.0),
    "tile_crossing": (None, 129, 257, 130, "wT", 1.0, 0.0),
    "attn_scores_prefill": (KV_HEADS, GROUP * PREFILL, HEAD_DIM, PREFILL, "cacheT", 0.125, 0.0),
    "attn_scores_decode": (KV_HEADS, GROUP, HEAD_DIM, DECODE_POS + 1, "cacheT", 0.125, 0.0),
    "attn_values_prefill": (KV_HEADS, GROUP * PREFILL, PREFILL, HEAD_DIM, "row", 1.0, 0.0),
    "attn_values_decode": (KV_HEADS, GROUP, DECODE_POS + 1, HEAD_DIM, "row", 1.0, 0.0),
    **{f"attn_scores_decode_{n}": (KV_HEADS, GROUP, HEAD_DIM, n, "cacheT", 0.125, 0.0)
       for n in LONG_KEYS},
    **{f"attn_values_decode_{n}": (KV_HEADS, GROUP, n, HEAD_DIM, "row", 1.0, 0.0)
       for n in LONG_KEYS},
    "alpha_beta_residual": (None, 16, 64, 48, "wT", 0.5, 1.0),
    "batch_broadcast_b": (4, 5, 24, 40, "bcast", 1.0, 0.0),
    # beta = 0 must not read C (BLAS convention): C starts as NaN here.
    "beta0_ignores_nan_output": (None, 4, 8, 8, "wT", 1.0, 0.0),
}


def _operands(name: str, dtype: str, device):
    batch, m, k, n, layout, alpha, beta = CASES[name]
    rng = rng_for("gemm", name, dtype)
    lead = () if batch is None else (batch,)
    a = host(lead + (m, k), dtype, rng)
    # Weights ~ 1/sqrt(K) keep outputs O(1), as in a trained layer.
    scale = 1.0 / np.sqrt(k)
    if layout == "wT":
        w = host(lead + (n, k), dtype, rng, scale)
        b_ref = np.swapaxes(w, -1, -2)
        b = to_device(w, device, dtype).transpose(-1, -2)
    elif layout == "cacheT":
        cache = host((batch, max(CACHE_LEN, n), k), dtype, rng, scale)
        b_ref = np.swapaxes(cache[:, :n, :], -1, -2)
        b = to_device(cache, device, dtype).narrow(1, 0, n).transpose(1, 2)
    elif layout == "bcast":
        b_ref = host((1, k, n), dtype, rng, scale)
        b = to_device(b_ref, device, dtype)
    else:
        b_ref = host(lead + (k, n), dtype, rng, scale)
        b = to_device(b_ref, device, dtype)
    c0 = host(lead + (m, n), dtype, rng) if beta else np.zeros(lead + (m, n))
    expected = alpha * np.matmul(a, b_ref) + beta * c0
    if name == "beta0_ignores_nan_output":
        c0 = np.full(lead + (m, n), np.nan)
    return to_device(a, device, dtype), b, to_device(c0, device, dtype), alpha, beta, expected


@pytest.mark.parametrize("case", list(CASES))
def test_op_gemm(case, dtype, infini_device, verify):
    a, b, c, alpha, beta, expected = _operands(case, dtype, infini_device)
    verify.param(a=a.describe(), b=b.describe(), c=c.describe(), alpha=alpha, beta=beta)
    with unsupported_guard(verify):
        ops.gemm(c, a, b, alpha, beta)
    verify.close(c.numpy(), expected, "gemm", dtype)


def test_op_gemm_repeated(infini_device, verify):
    """Repeated calls with one signature reuse one descriptor (an integer count), stay
    accurate on every call, and whether they are bit-identical is a finding: no standard
    asks a gemm to be deterministic across calls (another tiling or split-K may not be)."""
    from infinilm_models.runtime.ops.gemm import _op

    rng = rng_for("gemm-repeat", "f32")
    a_h, w_h = host((9, 64), "f32", rng), host((40, 64), "f32", rng, 0.125)
    a, w = to_device(a_h, infini_device, "f32"), to_device(w_h, infini_device, "f32")
    c = Tensor.zeros((9, 40), "f32", infini_device)
    ops.gemm(c, a, w.transpose(0, 1))
    created = _op.created
    outs = [c.numpy()]
    for _ in range(3):
        ops.gemm(c, a, w.transpose(0, 1))
        outs.append(c.numpy())
    verify.param(descriptors_created_by_repeats=_op.created - created)
    verify.require(verify.exact(_op.created - created, 0, "descriptors created by repeats"))
    for n, out in enumerate(outs):
        verify.close(out, a_h @ w_h.T, "gemm", "f32", f"call {n + 1}")
    same = all(np.array_equal(o, outs[0]) for o in outs[1:])
    verify.finding("deterministic across calls", same,
                   "every call bit-identical" if same else
                   "calls differ in the last bits (allowed: accuracy is judged per call)")


def test_op_gemm_sweep(sweep_case, dtype, infini_device, verify):
    p = sweep_case.params
    verify.param(**describe(sweep_case))
    m, k, n, batch, beta = p["m"], p["k"], p["n"], p["batch"], p["beta"]
    rng = rng_for("gemm-sweep", sweep_case.seed, sweep_case.name, dtype)
    lead = () if batch is None else (batch,)
    a = host(lead + (m, k), dtype, rng)
    if p["layout"] == "wT":
        w = host(lead + (n, k), dtype, rng, 1.0 / np.sqrt(k))
        b_ref, b = np.swapaxes(w, -1, -2), to_device(w, infini_device, dtype).transpose(-1, -2)
    else:
        b_ref = host(lead + (k, n), dtype, rng, 1.0 / np.sqrt(k))
        b = to_device(b_ref, infini_device, dtype)
    c0 = host(lead + (m, n), dtype, rng) if beta else np.zeros(lead + (m, n))
    c = to_device(c0, infini_device, dtype)
    verify.param(a=f"{list(a.shape)}", b=b.describe(), c=c.describe())
    with unsupported_guard(verify):
        ops.gemm(c, to_device(a, infini_device, dtype), b, 1.0, beta)
    verify.close(c.numpy(), np.matmul(a, b_ref) + beta * c0, "gemm", dtype)
