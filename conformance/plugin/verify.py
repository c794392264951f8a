"""The `verify` fixture: what a check uses to state its comparisons.

Checks say *what* they compare; the judge (`conformance.judge`) decides, and this object
records every judgement, applies the check's known-defect envelope where it covers the
comparison, and keeps what a replay bundle needs. A comparison out of bound does not
raise here: the plugin turns the recorded comparisons into the check's status when the
check returns (`require` stops a check early where going on makes no sense).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from .. import judge
from ..record import (
    Amplification,
    Comparison,
    Generation,
    Localization,
    Measurement,
    PerfSample,
    Scalar,
    TensorRow,
)
from . import defects

UNSUPPORTED_PREFIX = "unsupported: "


class Verify:
    def __init__(self, request: pytest.FixtureRequest, policy: judge.TolerancePolicy,
                 defect: defects.KnownDefect | None) -> None:
        self.request = request
        self.policy = policy
        self.defect = defect
        self.comparisons: list[Comparison] = []
        self.localization: list[Localization] = []
        # the typed parts of the record (record.CheckRecord), filled by the calls below
        self.setup: dict[str, Scalar] = {}
        self.tensors: list[TensorRow] = []
        self.amplification: Amplification | None = None
        self.generations: list[Generation] = []
        self.measurements: list[Measurement] = []
        self.perf: PerfSample | None = None
        self.expected: dict[str, tuple[np.ndarray, judge.Tolerance | None, str | None]] = {}
        self.trace = None  # conformance.replay.Trace of the InfiniCore calls (op checks)
        self.ops_called: set[str] = set()  # C op names this check called (the coverage)
        # --dump-tensors: the layer comparisons with their captures, until the check ends
        # (a Verify made outside a pytest check, by a self-test, has no request: no dump)
        self.keep_captures = request is not None and \
            request.config.getoption("--dump-tensors", None) is not None
        self.captures: list = []

    # -- recording ------------------------------------------------------------------------

    def _envelope(self, what: str) -> tuple[dict | None, str | None]:
        found = self.defect.envelope_for(what) if self.defect is not None else None
        return found if found is not None else (None, None)

    def keep(self, c: Comparison) -> Comparison:
        envelope, defect_id = self._envelope(c.what)
        if envelope is not None:
            c = judge.with_envelope(c, envelope, defect_id)
        self.comparisons.append(c)
        return c

    def require(self, c: Comparison) -> Comparison:
        """Stop the check now if `c` counts against it."""
        if c.counts_against:
            raise AssertionError(c.reason)
        return c

    # -- judgements -----------------------------------------------------------------------

    def close(self, actual, expected, check: str, dtype: str, what: str = "output"
              ) -> Comparison:
        """`actual` against the float64 `expected`, within the tolerance of (check, dtype)."""
        tol = self.policy.get(check, dtype)
        envelope, defect_id = self._envelope(what)
        c = judge.close(actual, expected, tol, what, dtype=dtype, envelope=envelope,
                        defect=defect_id)
        self.expected[what] = (np.asarray(expected), tol, dtype)
        self.comparisons.append(c)
        return c

    def calibrated(self, ours, reference, golden, check: str, dtype: str, what: str,
                   metric: str = "nmse", alternative=None) -> Comparison:
        """`alternative`: a second correct computation's output in the dtype (f16/bf16:
        the bound is then k x the spread of both, judge.spread)."""
        return self.keep(judge.calibrated(ours, reference, golden,
                                          self.policy.calibrated(check, dtype), what, metric,
                                          alternative=alternative))

    def calibrated_value(self, what: str, ours: float, reference: float, check: str,
                         dtype: str, metric: str, alternative: float | None = None
                         ) -> Comparison:
        return self.keep(judge.calibrated_value(what, ours, reference,
                                                self.policy.calibrated(check, dtype), metric,
                                                alternative=alternative))

    def exact(self, actual, expected, what: str = "output", *,
              standard: str = "integer output") -> Comparison:
        self.expected[what] = (np.asarray(expected), None, None)
        return self.keep(judge.exact(actual, expected, what, standard=standard))

    def argmax(self, token: int, logits, what: str = "token id") -> Comparison:
        return self.keep(judge.argmax_pick(token, logits, what))

    def rounded(self, actual, exact_value, dtype: str,
                what: str = "correctly rounded") -> Comparison:
        return self.keep(judge.correctly_rounded(actual, exact_value, dtype, what))

    def masked(self, probs, mask: np.ndarray, dtype: str) -> list[Comparison]:
        return [self.keep(c) for c in judge.masked_positions(probs, mask, dtype)]

    def finding(self, what: str, ok: bool, reason: str,
                metrics: dict[str, float] | None = None) -> Comparison:
        return self.keep(judge.finding(what, ok, reason, metrics))

    def finite(self, what: str, array) -> Comparison:
        return self.keep(judge.finite(what, array))

    def greedy_tokens(self, ours, reference, reference_logits, dtype: str, what: str, *,
                      sides: tuple[str, str] = ("ours", "golden"),
                      prompt_tokens: int | None = None, spread=None) -> Comparison:
        """Two sides' greedy tokens ([rows, steps]), equal up to a near tie of the reference
        side's logits ([rows, steps, vocab]) at the first divergence (judge.greedy_tokens,
        the margin of [generation_margin] in the dtype). Records the typed Generation."""
        c, gen = judge.greedy_tokens(ours, reference, reference_logits,
                                     self.policy.margin("generation_margin", dtype), what,
                                     sides, prompt_tokens, spread)
        self.generations.append(gen)
        return self.keep(c)

    def capture(self, result) -> None:
        """A layer comparison (model/checks.compare_capture): its comparisons, finished
        localizations, per-tensor rows and the first amplification, as recorded."""
        for c in result.comparisons:
            self.keep(c)
        self.localization.extend(result.localizations)
        self.tensors.extend(result.rows)
        if self.amplification is None:
            self.amplification = result.amplification
        if self.keep_captures:
            self.captures.append(result)

    def param(self, **values: Scalar) -> None:
        """What the check ran with beyond its pytest parameters (prompt source, batch,
        tensor layouts): named scalars, shown with the case."""
        for k, v in values.items():
            if v is not None and not isinstance(v, (str, int, float, bool)):
                v = str(v)
            self.setup[k] = v

    def measure(self, what: str, values: dict[str, float],
                reference: dict[str, float] | None = None, note: str = "") -> Measurement:
        """Numbers reported beside the verdicts, not judged (agreement rates, perplexities)."""
        m = Measurement(what, {k: float(v) for k, v in values.items()},
                        {k: float(v) for k, v in (reference or {}).items()}, note)
        self.measurements.append(m)
        return m

    def record_perf(self, group: str, impl: str, values: dict[str, Any]) -> PerfSample:
        """A benchmark's own measurements: numbers as values, the rest as labels."""
        values = {k: v for k, v in values.items() if k not in ("group", "impl")}
        nums = {k: float(v) for k, v in values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}
        labels = {k: (v if isinstance(v, str) else str(v)) for k, v in values.items()
                  if k not in nums and v is not None}
        self.perf = PerfSample(group, impl, nums, labels)
        return self.perf

    def unsupported(self, error: BaseException) -> None:
        """The backend refuses this op/dtype/layout: an explicit 'unsupported' result."""
        msg = f"{UNSUPPORTED_PREFIX}{error}"
        if self.request.config.getoption("--fail-on-unsupported"):
            pytest.fail(msg)
        pytest.skip(msg)


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def infini_device(pytestconfig: pytest.Config):
    from infinilm_models.runtime import Device, device_count

    dev = Device.parse(pytestconfig.getoption("--infini-device"))
    n = device_count(dev.type)
    if dev.index >= n:
        raise pytest.UsageError(
            f"--infini-device {dev}: the InfiniCore build at hand sees {n} {dev.type} device(s)")
    return dev


@pytest.fixture(scope="session")
def tolerances(pytestconfig: pytest.Config) -> judge.TolerancePolicy:
    return judge.TolerancePolicy.load(pytestconfig.getoption("--tolerances"))


@pytest.fixture
def verify(request: pytest.FixtureRequest, tolerances: judge.TolerancePolicy):
    from infinilm_models.runtime.ops._base import CachedOp

    from .. import fresh

    fresh.start_check()
    params = getattr(request.node, "callspec", None)
    model = params.params.get("model_name") if params is not None else None
    v = Verify(request, tolerances, defects.defect_for(request.config, request.node.nodeid,
                                                       None if model is None else str(model)))
    request.node._infinilm_verify = v

    def called(op, *_args) -> None:  # before each op call, also one the build lacks
        v.ops_called.add(op.name)

    CachedOp.hooks = CachedOp.hooks + (called,)
    try:
        if "/ops/" in request.node.nodeid.replace("\\", "/"):
            # Op checks keep their InfiniCore calls, so a failure can be replayed alone.
            from ..replay import Trace

            v.trace = Trace.start()
            yield v
            v.trace.stop()
        else:
            yield v
    finally:
        CachedOp.hooks = tuple(h for h in CachedOp.hooks if h is not called)
