"""The op checks must fail when an op is wrong. Each case runs the real InfiniCore op,
then judges a deliberately wrong result (or a wrong reference) with the same tolerance
policy the suite uses, and requires the verdict 'fail'."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from conformance.isolation import CrashedCheck, run_isolated
from conformance.judge import TolerancePolicy
from conformance.judge import close as compare
from conformance.ops.common import host, rng_for, to_device
from conformance.ops.references import causal_softmax as sm
from conformance.ops.references import random_sample as rs
from conformance.ops.references import rope as rp
from infinilm_models.runtime import Tensor, ops

POLICY = TolerancePolicy.load()
DTYPES = ["f32", "f16", "bf16"]


def _gemm(dtype, device):
    rng = rng_for("selftest-gemm", dtype)
    a, w = host((16, 96), dtype, rng), host((64, 96), dtype, rng, 96 ** -0.5)
    c = Tensor.zeros((16, 64), dtype, device)
    ops.gemm(c, to_device(a, device, dtype), to_device(w, device, dtype).transpose(0, 1))
    return c.numpy().astype(np.float64), a @ w.T


@pytest.mark.parametrize("dtype", DTYPES)
def test_correct_gemm_passes(dtype, infini_device, verify):
    got, ref = _gemm(dtype, infini_device)
    verify.close(got, ref, "gemm", dtype)  # judged (and known defects applied) as a check


@pytest.mark.parametrize("dtype", DTYPES)
def test_perturbed_gemm_output_fails(dtype, infini_device):
    """One element off by 2% of the output scale (a single wrong accumulation)."""
    got, ref = _gemm(dtype, infini_device)
    got[3, 7] += 0.02 * np.abs(ref).max() + 0.05
    result = compare(got, ref, POLICY.get("gemm", dtype))
    assert not result.passed
    assert "(3, 7)" in result.reason


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_missing_k_tail_fails(dtype, infini_device):
    """A kernel that drops the last K tile (a classic tiling bug)."""
    rng = rng_for("selftest-gemm-tail", dtype)
    a, w = host((8, 130), dtype, rng), host((32, 130), dtype, rng, 130 ** -0.5)
    c = Tensor.zeros((8, 32), dtype, infini_device)
    ops.gemm(c, to_device(a[:, :128], infini_device, dtype),
             to_device(w[:, :128], infini_device, dtype).transpose(0, 1))
    assert not compare(c.numpy(), a @ w.T, POLICY.get("gemm", dtype)).passed


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_wrong_algorithm_fails(dtype, infini_device):
    """GPT-J output judged against the GPT-NeoX reference (HF LLaMA) must fail."""
    x = host((9, 3, 64), dtype, rng_for("selftest-rope", dtype))
    pos = np.arange(9, dtype=np.int32)
    sin, cos = rp.tables(64, dtype)
    y = Tensor.empty(x.shape, dtype, infini_device)
    ops.rope(y, to_device(x, infini_device, dtype), to_device(pos, infini_device, "i32"),
             to_device(sin, infini_device, dtype), to_device(cos, infini_device, dtype), "gpt_j")
    assert compare(y.numpy(), rp.reference(x, pos, sin, cos, "gpt_j"),
                   POLICY.get("rope", dtype)).passed
    assert not compare(y.numpy(), rp.reference(x, pos, sin, cos, "gpt_neox"),
                       POLICY.get("rope", dtype)).passed


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_position_off_by_one_fails(dtype, infini_device):
    x = host((9, 3, 64), dtype, rng_for("selftest-rope-pos", dtype))
    pos = np.arange(9, dtype=np.int32)
    sin, cos = rp.tables(64, dtype)
    y = Tensor.empty(x.shape, dtype, infini_device)
    ops.rope(y, to_device(x, infini_device, dtype), to_device(pos + 1, infini_device, "i32"),
             to_device(sin, infini_device, dtype), to_device(cos, infini_device, dtype))
    assert not compare(y.numpy(), rp.reference(x, pos, sin, cos, "gpt_neox"),
                       POLICY.get("rope", dtype)).passed


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_mask_misaligned_fails(dtype, infini_device):
    """A decode chunk masked top-left instead of bottom-right (cache offset ignored)."""
    x = host((3, 4, 12), dtype, rng_for("selftest-sm", dtype), 4.0)
    y = Tensor.empty(x.shape, dtype, infini_device)
    ops.causal_softmax(y, to_device(x, infini_device, dtype))
    top_left = sm.reference(np.pad(x, ((0, 0), (0, 8), (0, 0))))[:, :4]
    assert compare(y.numpy(), sm.reference(x), POLICY.get("causal_softmax", dtype)).passed
    assert not compare(y.numpy(), top_left, POLICY.get("causal_softmax", dtype)).passed


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_swapped_operands_fails(dtype, infini_device):
    rng = rng_for("selftest-swiglu", dtype)
    up, gate = host((5, 40), dtype, rng, 2.0), host((5, 40), dtype, rng, 2.0)
    out = Tensor.empty(up.shape, dtype, infini_device)
    ops.swiglu(out, to_device(gate, infini_device, dtype), to_device(up, infini_device, dtype))
    assert not compare(out.numpy(), up * gate / (1 + np.exp(-gate)),
                       POLICY.get("swiglu", dtype)).passed


def test_nan_is_named_with_its_index():
    ref = np.ones((4, 5))
    got = ref.copy()
    got[2, 1] = np.nan
    result = compare(got, ref, POLICY.get("add", "f32"))
    assert not result.passed and "non-finite" in result.reason and "(2, 1)" in result.reason


def test_random_sample_reference_is_sensitive(infini_device):
    """The exact check distinguishes neighbouring ranks: as random_val sweeps the top-k
    mass, the reference's pick walks through neighbouring ranks of the order, InfiniCore's
    pick follows it at every step, and a pick one rank off fails the exact comparison."""
    from conformance import judge

    logits = rs.logits_for(256, "f32", "selftest")
    order = list(np.argsort(-logits, kind="stable"))
    device_logits = to_device(logits, infini_device, "f32")
    picked = {}  # rank in the order -> token id
    for r in np.linspace(0.05, 0.85, 17):
        want = rs.reference(logits, float(r), 0.9, 5, 1.0)
        result = Tensor.empty((), "i32", infini_device)
        ops.random_sample(result, device_logits, float(r), 0.9, 5, 1.0)
        assert judge.exact(int(result.numpy()), want).passed, f"random_val {r}"
        picked[order.index(want)] = want
    ranks = sorted(picked)
    assert len(ranks) >= 3 and ranks == list(range(ranks[0], ranks[0] + len(ranks)))
    assert not judge.exact(picked[ranks[1]], picked[ranks[0]]).passed


def _segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def _returns(x):
    return x * 2


def test_isolation_turns_a_segfault_into_a_failed_check():
    with pytest.raises(CrashedCheck, match="SIGSEGV"):
        run_isolated(_segfault, timeout=60)
    assert run_isolated(_returns, 21, timeout=60) == 42
