"""What a model check can see: the smallest defect its bounds resolve in its dtype.

A calibrated bound on an NMSE of T is breached by any defect that moves the tensor by a
relative RMS above sqrt(T), whatever the rounding does (the defect's NMSE adds to the
rounding's): sqrt(T) is the smallest defect the check resolves there, for sure. In f32
that is the floor's (3e-5 of 1e-9); in f16/bf16 it is what k x the spread of correct
implementations leaves (tolerances.toml), per isolated sub-module and per logits
comparison. A defect below it (a 100x RMSNorm epsilon on SmolLM2 in bf16) is below
what the dtype resolves: the f32 checks are the ones that see it.
"""

from __future__ import annotations

import math

from conformance.record import CheckRecord

from .format import fmt_number


def _pct(v: float) -> str:
    """A relative size in percent, two significant digits (f32 resolves 0.0032%)."""
    return f"{v * 100:.2g}%"


def _rms(threshold: float | None) -> float | None:
    return math.sqrt(threshold) if threshold is not None and math.isfinite(threshold) and \
        threshold >= 0 else None


def sub_module_resolution(r: CheckRecord) -> tuple[float, str, float, str] | None:
    """(smallest, where, largest, where): the relative RMS error of one sub-module's output
    (on its own, golden, input) that breaches its isolated bound, over the check's
    isolated sub-modules; None when the check has no isolated comparison."""
    found = [(_rms(row.isolated.threshold), f"{row.phase} {row.tensor}")
             for row in r.tensors if row.isolated is not None]
    found = [(v, w) for v, w in found if v is not None]
    if not found:
        return None
    lo, hi = min(found), max(found)
    return lo[0], lo[1], hi[0], hi[1]


def resolution(r: CheckRecord) -> str | None:
    """One line: the smallest defect each bound of a model check resolves in its dtype."""
    if r.model is None:
        return None
    parts = []
    sub = sub_module_resolution(r)
    if sub is not None:
        lo, at_lo, hi, at_hi = sub
        parts.append(f"a sub-module {_pct(lo)} off (relative RMS of its output, {at_lo}; "
                     f"{_pct(hi)} at {at_hi})")
    for c in r.comparisons:
        b = c.bound
        if b is None or b.kind != "calibrated" or b.threshold is None or \
                "compared" in c.metrics:  # a series: per tensor above
            continue
        if b.metric == "nmse" and _rms(b.threshold) is not None:
            parts.append(f"{c.what} {_pct(_rms(b.threshold))} off (relative RMS)")
        elif b.metric == "rel_delta":
            parts.append(f"{c.what} {_pct(b.threshold)} off")
        else:
            parts.append(f"{c.what} off by {b.metric} {fmt_number(b.threshold)}")
    if not parts:
        return None
    return f"smallest defect resolved in {r.dtype}: " + "; ".join(parts)
