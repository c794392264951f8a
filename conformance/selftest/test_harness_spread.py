"""The half-precision bound's parts: the faithful-rounding alternative (model/faithful.py),
the spread of correct implementations (judge.spread) and the resolution line of the
report (report/resolution.py). Unit-sized; the planted backends that pass and fail
through them are in test_harness_planted.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conformance import judge
from conformance.judge import Calibrated
from conformance.model.faithful import alternative, other_way
from conformance.model.reference import Reference
from conformance.record import CheckRecord, ErrorPoint, TensorRow
from conformance.report.resolution import resolution


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_other_way_is_the_far_neighbour_of_every_inexact_value(dtype):
    rng = np.random.default_rng(7)
    exact = torch.tensor(np.concatenate([
        rng.standard_normal(20000) * 10.0 ** rng.integers(-6, 4, 20000),
        [0.0, -0.0, 1.0, -2.0, 0.5, 1e-9, -1e-9]]), dtype=torch.float32)
    near, far = exact.to(dtype).double(), other_way(exact, dtype).double()
    e = exact.double()
    inexact = near != e
    assert torch.equal(far[~inexact], near[~inexact])  # representable: nothing to choose
    lo, hi = torch.minimum(near, far), torch.maximum(near, far)
    assert bool(((lo <= e) & (e <= hi))[inexact].all())  # the two neighbours enclose it
    assert bool(((far - e).abs() >= (near - e).abs())[inexact].all())
    # one spacing apart: nothing representable between them
    mid = ((lo + hi) / 2)[inexact].to(dtype).double()
    assert bool(((mid == lo[inexact]) | (mid == hi[inexact])).all())
    # about 7x the mean square error of rounding to nearest (uniform in [u/2, u])
    ratio = float(((far - e) ** 2).mean() / ((near - e) ** 2).mean())
    assert 4 < ratio < 12, ratio


def test_the_alternative_exists_only_in_half_precision():
    ref = Reference("/nowhere", "bf16", "cpu")
    alt = alternative(ref)
    assert alt is not None and alt.variant and alt.dtype == "bf16"
    assert alternative(Reference("/nowhere", "f32", "cpu")) is None
    assert alternative(alt) is None
    assert "other way" in alt.describe()


def test_the_spread_never_loosens_a_bound_below_transformers():
    assert judge.spread(2e-5, None) == 2e-5
    assert judge.spread(2e-5, 1e-5) == 2e-5
    assert judge.spread(2e-5, 7e-5) == 7e-5
    assert judge.spread(2e-5, math.nan) == 2e-5  # a missing alternative: transformers' alone
    cal = Calibrated(3.0, 1e-5, "model_activations.bf16")
    c = judge.calibrated_value("x", 1.5e-4, 2e-5, cal, "nmse", alternative=6e-5)
    assert c.passed and c.bound.reference == 6e-5 and c.bound.threshold == pytest.approx(1.9e-4)
    assert c.metrics["reference_nmse"] == 2e-5 and c.metrics["alternative_nmse"] == 6e-5
    bad = judge.calibrated_value("x", 2.5e-4, 2e-5, cal, "nmse", alternative=6e-5)
    assert not bad.passed and "faithful-rounding alternative's 6e-05" in bad.reason
    c, ok = judge.calibrated_series("s", ["a", "b"], [1e-4, 1e-4], [2e-5, 2e-5], cal,
                                    alternative=[1e-5, 4e-5])
    assert ok == [False, True] and not c.passed and "first a" in c.reason


def test_the_resolution_line_reads_the_bounds_of_the_record():
    rows = [TensorRow("prefill", t, s, ErrorPoint(1e-6, 1e-6, 1e-6),
                      isolated=ErrorPoint(1e-6, 1e-6, thr))
            for t, s, thr in (("norm", "final norm", 1e-4), ("layers.0.mlp", "mlp", 4e-4))]
    c = judge.calibrated_value("all positions: logits", 1e-4, 2e-5, Calibrated(4.0, 1e-5),
                               "nmse", alternative=2.5e-5)
    r = CheckRecord("n", "model_activations", "t", "passed", dtype="bf16", model="m",
                    tensors=rows, comparisons=[c])
    line = resolution(r)
    assert "a sub-module 1% off" in line and "(relative RMS of its output, prefill norm" in line
    assert "2% at prefill layers.0.mlp" in line
    assert "all positions: logits 1% off" in line  # sqrt(4 x 2.5e-5 + 1e-5) = 1.05%
    f32 = CheckRecord("n", "model_logits", "t", "passed", dtype="f32", model="m",
                      comparisons=[judge.calibrated_value("logits", 0.0, 0.0,
                                                          Calibrated(4.0, 1e-9), "nmse")])
    assert "logits 0.0032% off" in resolution(f32)
    assert resolution(CheckRecord("n", "op_gemm", "t", "passed", dtype="bf16", op="gemm")) is None
