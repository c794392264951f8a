"""Judging captured tensors: accumulated and isolated error per capture point, and where a
deviation shows first.

For every capture point of a run (prefill, or decode steps):
  * accumulated: ours vs golden when every layer consumed our own previous output; its
    bound is the loose gate (k = 64 x transformers' own error): a model may amplify a
    valid rounding difference at one spot, and such a spike is no defect;
  * isolated: ours vs golden when every sub-module consumed the golden run's own input;
    its bound is the strict calibrated one: a sub-module fed the right input must be
    about as accurate as transformers' on the same input.
A check fails on any isolated breach, any gate breach, any non-finite value, and on a
planned capture point that is missing on either side (a comparison that silently compared
less would pass for the wrong reason). The localization names the first sub-module that
computes wrong (isolated breach: "starts here") or, if none does, the first tensor whose
accumulated error breaches the gate, saying what the isolated comparison of that tensor
found ("arrives from earlier layers" when it ran and held, "not measured" when the check
has none): never a spike that stays within the gate when a later tensor breaches it, and
never past a NaN: a non-finite value is named where it first appears in the accumulated
run, unless a finite isolated breach comes before it. The KV cache of a layer is written
before the layer attends (capture.py orders it so): a wrong cache write is named as the
cache, not as the attention that reads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from conformance.judge import Calibrated, calibrated_series, spread, token_nmse
from conformance.record import (
    Amplification,
    Bound,
    Comparison,
    ErrorPoint,
    Localization,
    TensorRow,
)
from infinilm_models.models.llama.capture import CapturePoint


@dataclass
class CaptureResult:
    """What one layer comparison found: a row per compared tensor, the comparisons (gate
    and isolated), the finished localizations and the first amplification."""

    rows: list[TensorRow] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    localizations: list[Localization] = field(default_factory=list)
    amplification: Amplification | None = None
    # The captures judged, by side (ours, ref, golden, ours_iso, ref_iso): not recorded;
    # kept by `verify` only for --dump-tensors (conformance/dump.py).
    sides: dict = field(default_factory=dict, repr=False, compare=False)


def compare_capture(points: list[CapturePoint], *, ours: dict, ref: dict, golden: dict,
                    ours_iso: dict | None, ref_iso: dict | None, cal: Calibrated,
                    gate: Calibrated, phase: str, step: int | None = None,
                    steps: Sequence[dict] | None = None, context: str = "",
                    alt: dict | None = None, alt_iso: dict | None = None) -> CaptureResult:
    """Judge every capture point present on all three sides (see the module docstring).

    `alt`, `alt_iso`: the second correct half-precision implementation's captures
    (model/faithful.py), accumulated and isolated: each bound is then k x the spread of
    transformers' and its error (judge.spread), not transformers' alone. None in f32.

    `steps`: for pooled decode steps, each step's own captures ({"ours", "ours_iso",
    "golden"}), so that a localization names the step where its tensor deviates most.
    `context`: what was captured, leading each localization's sentence (e.g. "KV cache
    after cached decoding")."""
    label = phase if step is None else f"{phase} step {step}"
    rows: list[TensorRow] = []
    acc: list[tuple[CapturePoint, float, float]] = []
    iso: list[tuple[CapturePoint, float, float]] = []
    acc_alt: list[float | None] = []  # the alternative's error per entry (None: not run)
    iso_alt: list[float | None] = []
    missing = _missing(points, ours, golden, ours_iso)
    for p in points:
        g = golden.get(p.name)
        if g is None or p.name not in ours:
            continue
        a_o, a_r = token_nmse(ours[p.name], g), token_nmse(ref.get(p.name), g)
        a_a = token_nmse(alt.get(p.name), g) if alt is not None else None
        acc.append((p, a_o, a_r))
        acc_alt.append(a_a)
        row = TensorRow(phase=phase, step=step, tensor=p.name, layer=p.layer,
                        submodule=p.submodule,
                        accumulated=ErrorPoint(a_o, a_r, cal.threshold(spread(a_r, a_a)),
                                               gate_threshold=gate.threshold(spread(a_r, a_a))))
        if p.isolatable and ours_iso is not None and ref_iso is not None and \
                p.name in ours_iso:
            i_o, i_r = token_nmse(ours_iso[p.name], g), token_nmse(ref_iso.get(p.name), g)
            i_a = token_nmse(alt_iso.get(p.name), g) if alt_iso is not None else None
            iso.append((p, i_o, i_r))
            iso_alt.append(i_a)
            row.isolated = ErrorPoint(i_o, i_r, cal.threshold(spread(i_r, i_a)))
        rows.append(row)

    alts = acc_alt if alt is not None else None
    c_acc, acc_ok = calibrated_series(
        f"{label}: accumulated error per tensor (gate)", [p.name for p, _, _ in acc],
        [o for _, o, _ in acc], [r for _, _, r in acc], gate, alternative=alts)
    c_iso, iso_ok = calibrated_series(
        f"{label}: isolated sub-modules (on the reference's input)",
        [p.name for p, _, _ in iso], [o for _, o, _ in iso], [r for _, _, r in iso], cal,
        alternative=iso_alt if alt_iso is not None else None)
    _, strict_ok = calibrated_series("strict", [p.name for p, _, _ in acc],
                                     [o for _, o, _ in acc], [r for _, _, r in acc], cal,
                                     alternative=alts)
    for row, ok, strict in zip(rows, acc_ok, strict_ok):
        row.accumulated.passed = ok
        row.accumulated.within_strict = strict
    by_name = {r.tensor: r for r in rows}
    for (p, _, _), ok in zip(iso, iso_ok):
        by_name[p.name].isolated.passed = ok
    result = CaptureResult(rows, [c_acc, c_iso] if iso else [c_acc],
                           amplification=first_amplification(rows),
                           sides={"ours": ours, "ref": ref, "golden": golden,
                                  "ours_iso": ours_iso, "ref_iso": ref_iso})
    if missing:
        result.comparisons.insert(0, Comparison(
            f"{label}: capture points compared", False,
            f"{label}: {len(missing)} of {len(points)} planned capture points were not "
            f"compared (missing {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''})",
            {"missing": float(len(missing)), "planned": float(len(points))},
            Bound("exact", "every planned capture point on every side")))

    def loc(p: CapturePoint, value: float, limit: float, isolated: bool) -> None:
        result.localizations.append(_loc(phase, step, p, value, limit, isolated, steps,
                                         context, by_name[p.name].isolated))

    nonfinite = next(((p, o, r) for p, o, r in acc if math.isinf(o)), None)
    if nonfinite is not None:
        # The first non-finite value wins where it first appears. The accumulated run goes
        # first; an isolated breach before that point counts only if it is finite: an
        # isolated sub-module fed the golden's input cannot make a NaN of its own there,
        # so a NaN it shows came from state the first run left behind (a reused buffer
        # that a kernel reads, as 0.1.0's CPU gemm does with beta = 0).
        p0 = nonfinite[0]
        earlier = [(p, o, r) for (p, o, r), ok in zip(iso, iso_ok) if not ok
                   and math.isfinite(o) and _order(points, p) < _order(points, p0)]
        if earlier:
            p, o, _ = earlier[0]
            loc(p, o, by_name[p.name].isolated.threshold, True)
        else:
            loc(p0, nonfinite[1], by_name[p0.name].accumulated.gate_threshold, False)
        return result
    if not c_iso.passed:
        p, o, _ = iso[iso_ok.index(False)]
        loc(p, o, by_name[p.name].isolated.threshold, True)
    if not result.localizations and not c_acc.passed:
        p, o, _ = acc[acc_ok.index(False)]
        loc(p, o, by_name[p.name].accumulated.gate_threshold, False)
    return result


def first_amplification(rows: list[TensorRow]) -> Amplification | None:
    """The first tensor over the strict bound whose accumulated error stays within the
    gate: error amplified on its way, reported but not failing (e.g. SmolLM2's layer 1
    MLP in bf16, whose isolated error matches transformers')."""
    for r in rows:
        a = r.accumulated
        if a.passed and not a.within_strict:
            return Amplification(tensor=r.tensor, layer=r.layer, submodule=r.submodule,
                                 nmse=a.nmse, strict_threshold=a.threshold,
                                 isolated=r.isolated)
    return None


def _missing(points: list[CapturePoint], ours: dict, golden: dict,
             ours_iso: dict | None) -> list[str]:
    """Planned points absent from a side (the isolated side only where it was run)."""
    out = []
    for p in points:
        sides = [golden, ours] + ([ours_iso] if ours_iso is not None and p.isolatable else [])
        if any(p.name not in side for side in sides):
            out.append(p.name)
    return out


def _order(points: list[CapturePoint], p: CapturePoint) -> int:
    return next(i for i, q in enumerate(points) if q.name == p.name)


def _worst_step(steps: Sequence[dict], tensor: str, isolated: bool) -> int:
    """1-based: the decode step where `tensor` deviates most from the golden (a
    non-finite value counts as the largest)."""
    key = "ours_iso" if isolated else "ours"
    errs = [token_nmse(s[key].get(tensor), s["golden"][tensor]) for s in steps]
    return int(np.nanargmax(np.where(np.isfinite(errs), errs, np.inf))) + 1


def _loc(phase: str, step: int | None, p: CapturePoint, value: float, limit: float,
         isolated: bool, steps: Sequence[dict] | None, context: str,
         iso: ErrorPoint | None) -> Localization:
    where = f"layer {p.layer} {p.submodule}" if p.layer is not None else p.submodule
    n = None
    if steps:
        n = len(steps)
        step = _worst_step(steps, p.name, isolated)
        when = f"{phase} (worst at step {step} of {n})"
    else:
        when = phase if step is None else f"{phase} step {step}"
    if isolated:
        origin = "starts here"
        what = ("non-finite values that start here (on the reference's own input too)"
                if math.isinf(value) else
                f"starts here: computes wrong on the reference's own input: NMSE {value:.3g} "
                f"> {limit:.3g}")
    else:
        grew = ("non-finite values appear here first" if math.isinf(value) else
                f"error grew past the gate here: NMSE {value:.3g} > {limit:.3g}")
        if iso is None:
            origin = "not measured"
            what = f"{grew}; whether it starts here was not measured (no isolated run here)"
        elif iso.passed is False:
            origin = "starts here"
            what = (f"{grew}; on the reference's own input it is out of bound too (NMSE "
                    f"{iso.nmse:.3g} > {iso.threshold:.3g}): it starts here")
        else:
            origin = "arrives from earlier layers"
            what = (f"{grew}; on the reference's own input it is within bound (NMSE "
                    f"{iso.nmse:.3g} <= {iso.threshold:.3g}): the error arrives from earlier "
                    "layers")
    lead = f"{context}: " if context else ""
    return Localization(
        phase=phase, step=step, steps=n, tensor=p.name, layer=p.layer,
        submodule=p.submodule, ops=list(p.ops),
        nmse=value if math.isfinite(value) else None, threshold=limit, isolated=isolated,
        origin=origin,
        description=f"{lead}{when}: {where} ({p.name}) {what}; op-level checks to look at: "
                    f"{', '.join(p.ops)}")
