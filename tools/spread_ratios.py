"""How far each half-precision model check of a run is from its bound: the numbers the
calibrated k of tolerances.toml are derived from.

    python -m tools.spread_ratios reports/latest/results.json [more results.json ...]

Per check (f16/bf16 model checks): the largest ratio of ours to transformers' error and to
the spread of correct implementations (judge.spread: the larger of transformers' and the
faithful-rounding alternative's), for the isolated sub-modules, the accumulated tensors
and each calibrated scalar comparison (logits, KL, cached vs recompute, perplexity), with
where it was found; and the largest share of its bound (ours / threshold) anything used.
Run the suite with a planted backend (conformance/selftest/plants.py) to measure it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from conformance.judge import TolerancePolicy
from conformance.record import RunRecord


def _ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return math.nan
    return a / b if b > 0 else math.inf


def check_ratios(r, policy: TolerancePolicy) -> list[tuple[str, float, float, float, str]]:
    """(what, ours / transformers', ours / spread, ours / threshold, where) of one record."""
    out = []
    cal = policy.calibrated("model_activations", r.dtype)
    for kind in ("isolated", "accumulated"):
        best = None
        for row in r.tensors:
            e = getattr(row, kind)
            if e is None:
                continue
            basis = (e.threshold - cal.floor) / cal.k
            item = (f"{kind} tensors", _ratio(e.nmse, e.reference_nmse), _ratio(e.nmse, basis),
                    _ratio(e.nmse, e.threshold),
                    f"{row.phase}{'' if row.step is None else f' {row.step}'} {row.tensor}")
            if best is None or not item[2] <= best[2]:
                best = item
        if best is not None:
            out.append(best)
    for c in r.comparisons:  # a series (per tensor, per rank) by its worst entry
        b = c.bound
        if b is None or b.kind != "calibrated":
            continue
        m = b.metric or "nmse"
        ours, ref = c.metrics.get(m), c.metrics.get(f"reference_{m}")
        alt = c.metrics.get(f"alternative_{m}")
        spread = max(ref, alt) if alt is not None and ref is not None else ref
        out.append((c.what, _ratio(ours, ref), _ratio(ours, spread),
                    _ratio(ours, b.threshold), m))
    return out


def main(paths: list[str]) -> None:
    policy = TolerancePolicy.load()
    for path in paths:
        run = RunRecord.load(Path(path))
        print(f"# {path}")
        for r in sorted(run.results, key=lambda r: r.nodeid):
            if r.model is None or r.dtype not in ("f16", "bf16"):
                continue
            print(f"{r.nodeid.rsplit('::', 1)[-1]}  [{r.status}]")
            for what, vs_ref, vs_spread, share, where in check_ratios(r, policy):
                print(f"    {what[:58]:58s} /transformers {vs_ref:7.3g}  /spread "
                      f"{vs_spread:7.3g}  /bound {share:6.3g}  {where}")


if __name__ == "__main__":
    main(sys.argv[1:])
