"""results.json -> one self-contained index.html (inline CSS, plots as inline SVG).

The renderer reads the run only through `RunRecord.load` and arranges what the run
recorded: statuses, the verdict, comparisons with their bounds, localizations, crashes and
bundles are the record's own, never recomputed. Counting statuses per matrix cell, picking
the status that colours a cell (the most severe one present) and picking the worst case
of an op to show first is presentation, not judgement.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jinja2

from conformance.record import (
    FAILING,
    STATUSES,
    Bound,
    CheckRecord,
    Comparison,
    Localization,
    RunRecord,
    results_path,
)
from conformance.results import atomic_write_text

from .plots import Series, layer_plot, layer_position, positive

# Display order of severity: a cell with one crash among passes is coloured as crashed.
SEVERITY = ("crashed", "failed", "error", "not_run", "known_defect", "unsupported", "passed")
SHORT = {"passed": "pass", "failed": "fail", "crashed": "crash", "error": "error",
         "not_run": "not run", "unsupported": "unsup", "known_defect": "known"}
DTYPE_ORDER = ("f32", "f16", "bf16")
NO_DTYPE = "—"
METRIC_COLUMNS = ("max_abs", "max_rel", "mean_abs", "nmse", "sqnr_db", "cosine")
# Metrics a property comparison is read by (IEEE rounding: how far, how often, which way).
PROPERTY_METRICS = ("max_ulp", "fraction", "mismatches", "below", "above", "toward_zero")
# `info` keys shown elsewhere than the generic measurement rows and notes.
INFO_SHOWN_ELSEWHERE = ("per_tensor", "first_divergence", "tolerance", "gate", "perf",
                        "amplification")
MESSAGE_CHARS = 2000
# Comparisons listed in a check's card before the rest (all within bound) are folded away.
CARD_COMPARISONS = 8


def make_env() -> jinja2.Environment:
    """Autoescape always on: model paths, messages and params come from user configs and
    must never become markup. StrictUndefined turns a template typo into an error."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("conformance.report", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True)
    env.filters["num"] = fmt_number
    env.globals["SHORT"] = SHORT
    return env


def fmt_number(v: object, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        f = float(v)
        if math.isnan(f):
            return "NaN"
        if math.isinf(f):
            return "∞" if f > 0 else "-∞"
        if isinstance(v, int):
            return str(v)
        return f"{f:.{digits}g}"
    return str(v)


def cell(statuses: list[str], findings: int = 0) -> dict | None:
    """A matrix cell: counts per status, coloured by the most severe status present.
    Findings are counted beside it and never change the colour."""
    if not statuses:
        return None
    counts = Counter(statuses)
    worst = next(s for s in SEVERITY if counts.get(s))
    parts = [f"{counts[s]} {SHORT[s]}" for s in SEVERITY if counts.get(s)]
    title = ", ".join(f"{counts[s]} {s}" for s in SEVERITY if counts.get(s))
    if findings:
        title += f"; {findings} check(s) with findings (shown, not failing)"
    return {"status": worst, "text": " · ".join(parts), "n": len(statuses),
            "title": title, "findings": findings}


def slug(*parts: object) -> str:
    raw = "-".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in raw)


def dtype_of(r: CheckRecord) -> str:
    return r.dtype or NO_DTYPE


def ordered_dtypes(run: RunRecord, records: list[CheckRecord]) -> list[str]:
    seen = {dtype_of(r) for r in records}
    order = [d for d in list(run.dtypes) + list(DTYPE_ORDER) if d in seen]
    order = list(dict.fromkeys(order))
    rest = sorted(seen - set(order) - {NO_DTYPE})
    return order + rest + ([NO_DTYPE] if NO_DTYPE in seen else [])


def case_label(r: CheckRecord, drop: tuple[str, ...] = ("dtype",)) -> str:
    """The case within its matrix cell: the parameters that are not already the cell's
    coordinates, and the test function when it is not the check's main one."""
    parts = [f"{k}={v}" for k, v in r.params.items() if k not in drop]
    if r.test != f"test_{r.check}" or not parts:
        parts.insert(0, r.test)
    return ", ".join(parts)


def describe(b: Bound | None) -> str:
    if b is None:
        return ""
    try:
        text = b.describe()
    except (TypeError, ValueError):  # a bound with a field missing for its kind
        text = b.kind
    if b.max_ulp is not None and "ulp" not in text:  # an IEEE rounding bound, or its envelope
        text = "exact (0 ulp)" if b.max_ulp == 0 else f"within {b.max_ulp} ulp"
    return f"{text} ({b.source})" if b.source and b.source not in text else text


def _safe_href(path: str | None) -> str | None:
    """A relative path to link; never a URL with a scheme (javascript:, http:)."""
    if not path or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", path):
        return None
    return path.replace("\\", "/")


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


# -- comparisons -------------------------------------------------------------------------


def comparison_label(c: Comparison) -> str:
    return c.what if c.kind == "accuracy" else f"{c.kind}: {c.what}"


def comparison_summary(c: Comparison) -> str:
    """The metrics a comparison is read by, as one line (properties: ulp and fraction)."""
    m = c.metrics
    if c.kind == "property":
        keys = [k for k in PROPERTY_METRICS if k in m] or list(m)
    elif c.kind == "finding":
        keys = list(m)
    else:
        keys = [k for k in METRIC_COLUMNS if k in m] or list(m)
        keys += [k for k in m if k.startswith("reference_")]
    names = {"max_ulp": "max ulp", "toward_zero": "toward zero", "max_abs": "max abs",
             "max_rel": "max rel", "mean_abs": "mean abs", "sqnr_db": "SQNR dB"}
    return ", ".join(f"{names.get(k, k)} {fmt_number(m[k])}" for k in keys[:10])


def comparison_row(c: Comparison) -> dict:
    m = c.metrics
    extra = {k: v for k, v in m.items() if k not in METRIC_COLUMNS and
             not k.startswith("scale_bias") and k != "reference_nmse"}
    if c.passed:
        state = "holds" if c.kind != "accuracy" else "within bound"
    elif c.explained_by:
        state = "known defect"
    elif c.kind == "finding":
        state = "finding"
    else:
        state = "out of bound" if c.kind == "accuracy" else "violated"
    return {"label": comparison_label(c), "kind": c.kind, "what": c.what,
            "passed": c.passed, "state": state, "against": c.counts_against,
            "reason": c.reason, "metrics": m, "summary": comparison_summary(c),
            "extra": extra, "ref_nmse": m.get("reference_nmse"),
            "bound": describe(c.bound), "explained_by": c.explained_by,
            "envelope": describe(c.envelope),
            "standard": c.kind == "accuracy" and any(k in m for k in METRIC_COLUMNS)}


def info_rows(r: CheckRecord) -> list[dict]:
    """Check-specific metric objects kept in `info` (logits, cache, gates), as rows."""
    rows = []
    for key, v in r.info.items():
        if not isinstance(v, dict) or key in INFO_SHOWN_ELSEWHERE:
            continue
        if isinstance(v.get("metrics"), dict):
            ref = v.get("reference_metrics")
            rows.append({"label": key, "metrics": v["metrics"],
                         "extra": v.get("logits") if isinstance(v.get("logits"), dict) else {},
                         "ref_nmse": ref.get("nmse") if isinstance(ref, dict) else None,
                         "bound": "", "passed": None, "state": "", "kind": "info",
                         "standard": True, "against": False, "explained_by": None})
        elif "nmse" in v:
            rows.append({"label": key, "metrics": v, "extra": {},
                         "ref_nmse": v.get("reference_nmse"), "bound": "", "passed": None,
                         "state": "", "kind": "info", "standard": True, "against": False,
                         "explained_by": None})
    return rows


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


def notes(r: CheckRecord) -> list[str]:
    """Facts of `info` not shown as measurement rows: scalars (perplexities, layouts,
    sizes), small objects of scalars one level deep (logits agreement), and a summary of
    the generations."""
    out = []
    for key, v in r.info.items():
        if key in INFO_SHOWN_ELSEWHERE:
            continue
        if _scalar(v):
            out.append(f"{key} = {fmt_number(v, 5)}")
        elif key == "generations" and isinstance(v, list):
            firsts = [g.get("first_divergence") for g in v if isinstance(g, dict)]
            out.append(f"generations: {len(v)} prompt(s); first divergent step per prompt: "
                       + ", ".join("none" if f is None else str(f) for f in firsts))
        elif isinstance(v, dict) and not isinstance(v.get("metrics"), dict) and "nmse" not in v:
            flat = []
            for k, x in v.items():
                if _scalar(x):
                    flat.append(f"{k}={fmt_number(x, 4)}")
                elif isinstance(x, dict) and all(_scalar(y) for y in x.values()):
                    flat += [f"{k}.{k2}={fmt_number(y, 4)}" for k2, y in x.items()]
            if flat:
                out.append(f"{key}: " + ", ".join(flat[:16]) + (" ..." if len(flat) > 16 else ""))
    return out


def amplification(r: CheckRecord) -> dict | None:
    """`info["amplification"]`: error that grew past the strict bound on its way but stayed
    within the gate (reported, not failing)."""
    a = r.info.get("amplification")
    if not isinstance(a, dict) or "tensor" not in a:
        return None
    iso = a.get("isolated") if isinstance(a.get("isolated"), dict) else None
    return {"tensor": str(a["tensor"]), "layer": _int_or_none(a.get("layer")),
            "submodule": str(a.get("submodule") or ""), "nmse": _num(a.get("nmse")),
            "strict_threshold": _num(a.get("strict_threshold")),
            "isolated_nmse": _num(iso.get("nmse")) if iso else None,
            "isolated_threshold": _num(iso.get("threshold")) if iso else None}


# -- localization and per-layer error ------------------------------------------------------


def where_label(phase: str, step: int | None) -> str:
    if phase == "decode":
        return "decode" + (f" step {step}" if step is not None else "")
    return phase + (f" step {step}" if step not in (None, 0) else "")


# The check whose records say whether an op can be captured into a device graph
# (conformance/ops/test_op_capture.py): a column of the op matrix, not a dtype cell.
CAPTURE_CHECK = "op_capture"


class OpAnchors:
    """Anchors of the op-level sections that exist in this report, per dtype."""

    def __init__(self, op_records: list[CheckRecord]) -> None:
        self.present = {(dtype_of(r), r.op) for r in op_records}

    @staticmethod
    def anchor(dtype: str, op: str) -> str:
        return slug("op", dtype, op)

    def link(self, dtype: str, op: str) -> dict:
        return {"name": op,
                "anchor": self.anchor(dtype, op) if (dtype, op) in self.present else None}


def callout(loc: Localization, r: CheckRecord, ops: OpAnchors) -> dict:
    return {"where": where_label(loc.phase, loc.step), "phase": loc.phase, "step": loc.step,
            "layer": loc.layer, "submodule": loc.submodule, "tensor": loc.tensor,
            "isolated": loc.isolated, "nmse": loc.nmse, "threshold": loc.threshold,
            "description": loc.description,
            "ops": [ops.link(dtype_of(r), op) for op in loc.ops]}


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def per_tensor_rows(info: dict) -> list[dict] | None:
    """`info["per_tensor"]` in the layout this report plots ({phase, step, tensor, layer,
    submodule, accumulated: {...}, isolated: {...} | null}); None when absent or in any
    other layout (an older run): then nothing is plotted."""
    raw = info.get("per_tensor")
    if not isinstance(raw, list) or not raw:
        return None
    rows = []
    for x in raw:
        if not isinstance(x, dict) or not isinstance(x.get("accumulated"), dict):
            return None
        iso = x.get("isolated")
        if iso is not None and not isinstance(iso, dict):
            return None
        phase = x.get("phase") if x.get("phase") in ("prefill", "decode") else "prefill"
        rows.append({"phase": phase, "step": _int_or_none(x.get("step")),
                     "tensor": str(x.get("tensor", "?")), "layer": _int_or_none(x.get("layer")),
                     "submodule": str(x.get("submodule") or ""), "acc": x["accumulated"],
                     "iso": iso})
    return rows


def _passed(d: dict | None) -> bool | None:
    v = (d or {}).get("passed")
    return v if isinstance(v, bool) else None


def layer_series(acc: list[dict], iso: list[dict], cache: list[bool]) -> list[Series]:
    """The lines of a per-layer plot. The KV cache is a different quantity from the
    hidden-state stream: its own markers, not joined into the lines."""

    def values(ds: list[dict], key: str, kv: bool = False) -> list[float]:
        return [positive(d.get(key)) if c == kv else math.nan
                for d, c in zip(ds, cache)]

    def over(ds: list[dict]) -> list[bool]:
        return [_passed(d) is False for d in ds]

    return [
        Series("accumulated: ours", "#1565c0", values(acc, "nmse"), marker="circle",
               failed=over(acc)),
        Series("accumulated: transformers", "#757575", values(acc, "reference_nmse"),
               dash="2 3"),
        Series("isolated sub-module: ours", "#8e24aa", values(iso, "nmse"),
               marker="square", failed=over(iso)),
        Series("isolated: transformers", "#ce93d8", values(iso, "reference_nmse"),
               dash="2 3"),
        Series("KV cache: ours", "#00897b", values(acc, "nmse", True),
               marker="diamond", failed=over(acc), line=False),
        Series("KV cache isolated: ours", "#6d4c41", values(iso, "nmse", True),
               marker="diamond", failed=over(iso), line=False),
        Series("strict bound (accumulated)", "#c62828", values(acc, "threshold"),
               dash="6 4", width=1.1),
        Series("gate (failure bound)", "#c62828", values(acc, "gate_threshold"),
               dash="9 3 2 3", width=1.0),
        Series("isolated bound", "#8e24aa", values(iso, "threshold"), dash="6 4",
               width=1.0),
    ]


def layer_groups(r: CheckRecord, rows: list[dict], title: str, plots: bool,
                 anchor: str) -> list[dict]:
    """One group per (phase, step): its plot, its rows, the tensors localized in it."""
    layers = [x["layer"] for x in rows if x["layer"] is not None]
    num_layers = max(layers) + 1 if layers else 0
    groups: dict[tuple[str, int | None], list[dict]] = {}
    for x in rows:
        groups.setdefault((x["phase"], x["step"]), []).append(x)
    out = []
    for (phase, step), grp in groups.items():
        localized = {loc.tensor for loc in r.localization if loc.phase == phase and
                     (phase == "prefill" or loc.step == step)}
        xs = [layer_position(x["layer"], x["submodule"], num_layers, x["tensor"]) for x in grp]
        label = where_label(phase, step)
        plot = None
        if plots:
            acc = [x["acc"] for x in grp]
            iso = [x["iso"] or {} for x in grp]
            series = layer_series(acc, iso, [x["submodule"] == "kv cache" for x in grp])
            zeros = any(d.get("nmse") == 0 for d in acc + iso)
            plot = layer_plot(xs, [x["tensor"] for x in grp], series,
                              [xv for xv, x in zip(xs, grp) if x["tensor"] in localized],
                              num_layers, f"{title} · {label}", zeros)
        over = any(_passed(x["acc"]) is False or _passed(x["iso"]) is False for x in grp)
        out.append({"label": label, "plot": plot, "rows": grp, "localized": localized,
                    "over": over, "anchor": slug(anchor, phase, step if step is not None
                                                 else "")})
    return out


def split_groups(groups: list[dict]) -> tuple[list[dict], list[dict]]:
    """Groups shown at once (the first, and every one with a localization or a tensor
    over its bound) and the rest, folded."""
    first = [i == 0 or bool(g["localized"]) or g["over"] for i, g in enumerate(groups)]
    return ([g for g, f in zip(groups, first) if f], [g for g, f in zip(groups, first) if not f])


# -- the view ----------------------------------------------------------------------------


class Anchors:
    """A unique anchor per check (node ids can differ only in characters slug drops)."""

    def __init__(self, records: list[CheckRecord]) -> None:
        self.of: dict[str, str] = {}
        used: set[str] = set()
        for r in records:
            base = slug("chk", r.nodeid)[:150]
            a, n = base, 1
            while a in used:
                n += 1
                a = f"{base}-{n}"
            used.add(a)
            self.of[r.nodeid] = a


def card(r: CheckRecord, anchors: Anchors, ops: OpAnchors, layer_anchor: str | None) -> dict:
    """Everything the record says about a check that did not pass."""
    rows = [comparison_row(c) for c in r.comparisons]
    rows.sort(key=lambda x: (not x["against"], x["explained_by"] is None,
                             x["passed"]))  # stable: failing first, in recorded order
    # Sorted with what did not hold first: those are shown, the rest folded when many.
    n_bad = sum(not x["passed"] for x in rows)
    keep = len(rows) if len(rows) <= CARD_COMPARISONS else (n_bad or CARD_COMPARISONS)
    shown, folded = rows[:keep], rows[keep:]
    crash = None
    if r.crash is not None:
        c = r.crash
        crash = {"signal": c.signal, "exit_code": c.exit_code, "timeout": c.timeout,
                 "op": ops.link(dtype_of(r), c.op) if c.op else None,
                 "last_call": c.last_call, "traceback": c.traceback}
    bundle = None
    href = _safe_href(r.bundle)
    if r.bundle:
        href_dir = href.rstrip("/") + "/" if href else None
        bundle = {"path": r.bundle, "href": href_dir,
                  "readme": f"{href_dir}README.txt" if href_dir else None,
                  "command": f"python -m conformance.replay {r.bundle}"}
    return {"anchor": anchors.of[r.nodeid], "nodeid": r.nodeid, "status": r.status,
            "check": r.check, "test": r.test, "model": r.model, "op": r.op, "dtype": r.dtype,
            "case": r.case, "params": r.params, "duration_s": r.duration_s,
            "message": r.message[-MESSAGE_CHARS:], "known_defect": r.known_defect,
            "not_run_reason": r.not_run_reason, "comparisons": shown, "folded": folded,
            "crash": crash, "bundle": bundle,
            "callouts": [callout(loc, r, ops) for loc in r.localization],
            "notes": notes(r), "layer_anchor": layer_anchor}


def _model_section(model: str, dtype: str, records: list[CheckRecord], anchors: Anchors,
                   ops: OpAnchors, plots: bool, layer_anchors: dict[str, str]) -> dict:
    anchor = slug("cmp", model, dtype)
    checks, layers, callouts, amplified = [], [], [], []
    for r in sorted(records, key=lambda r: (r.check, r.nodeid)):
        rows = [comparison_row(c) for c in r.comparisons] + info_rows(r)
        checks.append({"check": r.check, "case": case_label(r, ("dtype", "model_name")),
                       "status": r.status, "message": r.message[:1500], "rows": rows,
                       "notes": notes(r), "anchor": anchors.of[r.nodeid],
                       "card": r.status not in ("passed", "unsupported", "not_run"),
                       "known_defect": r.known_defect.id if r.known_defect else None})
        for loc in r.localization:
            callouts.append({**callout(loc, r, ops), "check": r.check,
                             "anchor": anchors.of[r.nodeid], "status": r.status})
        amp = amplification(r)
        if amp is not None:
            amplified.append({**amp, "check": r.check})
        pt = per_tensor_rows(r.info)
        if pt is not None:
            la = slug("layers", r.nodeid)
            layer_anchors[r.nodeid] = la
            groups = layer_groups(r, pt, f"{r.check} {model} {dtype}", plots, la)
            shown, folded = split_groups(groups)
            layers.append({"check": r.check, "case": case_label(r, ("dtype", "model_name")),
                           "status": r.status, "anchor": la, "groups": shown,
                           "folded": folded})
        elif r.info.get("per_tensor"):
            layers.append({"check": r.check, "case": case_label(r, ("dtype", "model_name")),
                           "status": r.status, "anchor": slug("layers", r.nodeid),
                           "groups": [], "folded": [], "unknown_layout": True})
    return {"model": model, "dtype": dtype, "anchor": anchor, "checks": checks,
            "layers": layers, "callouts": callouts, "amplified": amplified,
            "cell": cell([r.status for r in records])}


def _op_section(dtype: str, op: str, records: list[CheckRecord], anchors: Anchors) -> dict:
    worst = None  # the accuracy comparison closest to (or furthest past) its NMSE bound
    properties: dict[str, dict] = {}
    max_abs = None
    for r in records:
        for c in r.comparisons:
            nmse, bound = _num(c.metrics.get("nmse")), c.bound.nmse if c.bound else None
            if c.kind == "accuracy" and nmse is not None and bound:
                ratio = nmse / bound
                if worst is None or ratio > worst["ratio"]:
                    worst = {"ratio": ratio, "nmse": nmse, "bound": bound,
                             "case": case_label(r, ("dtype", "op"))}
            if c.kind == "accuracy" and _num(c.metrics.get("max_abs")) is not None:
                max_abs = max(max_abs or 0.0, float(c.metrics["max_abs"]))
            if c.kind == "property":
                p = properties.setdefault(c.what, {"label": comparison_label(c), "n": 0,
                                                   "held": 0, "max_ulp": None,
                                                   "fraction": None, "explained": 0})
                p["n"] += 1
                p["held"] += c.passed
                p["explained"] += c.explained_by is not None
                for k in ("max_ulp", "fraction"):
                    v = _num(c.metrics.get(k))
                    if v is not None:
                        p[k] = v if p[k] is None else max(p[k], v)
    checks = sorted({r.check for r in records})
    return {
        "op": op, "checks": checks, "anchor": OpAnchors.anchor(dtype, op),
        "cell": cell([r.status for r in records], sum(1 for r in records if r.findings)),
        "worst": worst, "max_abs": max_abs, "properties": list(properties.values()),
        "records": [{"case": case_label(r, ("dtype", "op")), "status": r.status,
                     "nodeid": r.nodeid, "message": r.message[:1500],
                     "anchor": anchors.of[r.nodeid],
                     "card": r.status not in ("passed", "unsupported", "not_run"),
                     "comparisons": [comparison_row(c) for c in r.comparisons]}
                    for r in sorted(records, key=lambda r: r.nodeid)]}


def _perf_rows(records: list[CheckRecord]) -> tuple[list[str], list[dict]]:
    """Every check's `info.perf` (the benchmarks' own measurements), as one table."""
    rows, columns = [], {}
    for r in records:
        perf = r.info.get("perf")
        if not isinstance(perf, dict):
            continue
        values = {k: v for k, v in perf.items()
                  if isinstance(v, (int, float, str, bool)) or v is None}
        for k in values:
            columns.setdefault(k, None)
        rows.append({"nodeid": r.nodeid, "status": r.status, "values": values})
    return list(columns)[:16], rows


def benchmarks(perf: Any) -> list[dict]:
    """pytest-benchmark entries of the run's `perf` that carry their statistics."""
    items = perf.get("benchmarks") if isinstance(perf, dict) else None
    return [b for b in items or [] if isinstance(b, dict) and isinstance(b.get("stats"), dict)
            and all(isinstance(b["stats"].get(k, 0), (int, float))
                    for k in ("mean", "median", "min", "stddev"))]


def build_view(run: RunRecord, plots: bool = True) -> dict:
    records = run.results
    anchors = Anchors(records)
    model_recs = [r for r in records if r.model is not None]
    op_recs = [r for r in records if r.model is None and r.op is not None]
    other_recs = [r for r in records if r.model is None and r.op is None]
    ops = OpAnchors(op_recs)
    dtypes = ordered_dtypes(run, records)
    models = list(dict.fromkeys(r.model for r in model_recs))
    model_checks = sorted({r.check for r in model_recs})
    op_names = sorted({r.op for r in op_recs}, key=lambda o: (
        min(r.check for r in op_recs if r.op == o), o))

    # One pass: statuses (and checks with findings) per matrix cell.
    by_cell: dict[tuple, list[CheckRecord]] = {}
    for r in model_recs:
        by_cell.setdefault(("model", r.model, r.check, dtype_of(r)), []).append(r)
    for r in op_recs:
        # Capturability is a property of the op on this backend, one column for all dtypes.
        key = ("capture", r.op) if r.check == CAPTURE_CHECK else ("op", r.op, dtype_of(r))
        by_cell.setdefault(key, []).append(r)
    for r in other_recs:
        by_cell.setdefault(("other", r.check, dtype_of(r)), []).append(r)

    def cell_of(*key) -> dict | None:
        recs = by_cell.get(key, [])
        return cell([r.status for r in recs], sum(1 for r in recs if r.findings))

    # Each matrix gets only the dtype columns its own checks have.
    model_dtypes = ordered_dtypes(run, model_recs)
    op_dtypes = ordered_dtypes(run, op_recs)
    other_dtypes = ordered_dtypes(run, other_recs)
    model_matrix = [{"model": m, "anchors": {d: slug("cmp", m, d) for d in model_dtypes},
                     "cells": {c: {d: cell_of("model", m, c, d) for d in model_dtypes}
                               for c in model_checks}} for m in models]
    captured = {}  # op -> the anchor of the first op section holding its capture checks
    for r in op_recs:
        if r.check == CAPTURE_CHECK:
            captured.setdefault(r.op, OpAnchors.anchor(dtype_of(r), r.op))
    op_matrix = [{"op": o, "checks": sorted({r.check for r in op_recs
                                             if r.op == o and r.check != CAPTURE_CHECK}),
                  "cells": {d: cell_of("op", o, d) for d in op_dtypes},
                  "anchors": {d: OpAnchors.anchor(d, o) for d in op_dtypes},
                  "capture": cell_of("capture", o), "capture_anchor": captured.get(o)}
                 for o in op_names]
    # Parallel layouts (tp/pp) across the checks that run them, summed over models.
    par_recs = [r for r in records if isinstance(r.params.get("layout"), str)]
    par_layouts = list(dict.fromkeys(r.params["layout"] for r in par_recs))
    par_checks = sorted({r.check for r in par_recs})
    par_dtypes = ordered_dtypes(run, par_recs)
    par_cells: dict[tuple, list[str]] = {}
    for r in par_recs:
        par_cells.setdefault((r.params["layout"], r.check, dtype_of(r)), []).append(r.status)
    parallel_matrix = [{"layout": lay,
                        "cells": {c: {d: cell(par_cells.get((lay, c, d), []))
                                      for d in par_dtypes} for c in par_checks}}
                       for lay in par_layouts]
    other_checks = sorted({r.check for r in other_recs})
    other_matrix = [{"check": c, "cells": {d: cell_of("other", c, d) for d in other_dtypes}}
                    for c in other_checks]

    layer_anchors: dict[str, str] = {}
    sections = []
    for d in dtypes:
        comparisons = []
        for m in models:
            recs = [r for r in model_recs if r.model == m and dtype_of(r) == d]
            if recs:
                comparisons.append(_model_section(m, d, recs, anchors, ops, plots,
                                                  layer_anchors))
        op_rows = []
        for o in op_names:
            recs = [r for r in op_recs if r.op == o and dtype_of(r) == d]
            if recs:
                op_rows.append(_op_section(d, o, recs, anchors))
        if comparisons or op_rows:
            sections.append({"dtype": d, "ops": op_rows, "comparisons": comparisons})

    def cards(statuses) -> list[dict]:
        chosen = [r for r in records if r.status in statuses]
        chosen.sort(key=lambda r: (SEVERITY.index(r.status), r.nodeid))
        return [card(r, anchors, ops, layer_anchors.get(r.nodeid)) for r in chosen]

    not_run: dict[str, list[CheckRecord]] = {}
    for r in records:
        if r.status == "not_run":
            not_run.setdefault(r.not_run_reason or "no reason recorded", []).append(r)
    findings = [{"nodeid": r.nodeid, "anchor": anchors.of[r.nodeid], "status": r.status,
                 "model": r.model, "op": r.op, "dtype": r.dtype,
                 "case": case_label(r, ("dtype", "model_name", "op")),
                 "section": (slug("cmp", r.model, dtype_of(r)) if r.model is not None else
                             OpAnchors.anchor(dtype_of(r), r.op) if r.op is not None else None),
                 **comparison_row(c)}
                for r in records for c in r.findings]
    perf_columns, perf_rows = _perf_rows(records)
    planned = max(run.planned, len(records))
    return {
        "run": run, "verdict": run.verdict, "counts": run.counts, "statuses": STATUSES,
        "severity": SEVERITY, "dtypes": dtypes, "planned": planned,
        "not_run_total": run.counts.get("not_run", 0),
        "model_dtypes": model_dtypes, "op_dtypes": op_dtypes, "other_dtypes": other_dtypes,
        "models": models, "model_checks": model_checks, "model_matrix": model_matrix,
        "op_matrix": op_matrix, "op_capture_column": bool(captured),
        "parallel_matrix": parallel_matrix, "parallel_checks": par_checks,
        "parallel_dtypes": par_dtypes,
        "other_matrix": other_matrix, "sections": sections,
        "failures": cards(FAILING - {"not_run"}), "known": cards({"known_defect"}),
        "not_run": [{"reason": reason, "records": [
            {"nodeid": r.nodeid, "model": r.model, "op": r.op, "dtype": r.dtype,
             "case": case_label(r, ("dtype", "model_name", "op"))} for r in recs]}
            for reason, recs in not_run.items()],
        "unsupported": [{"nodeid": r.nodeid, "dtype": r.dtype, "op": r.op, "model": r.model,
                         "message": r.message[:500]} for r in records
                        if r.status == "unsupported"],
        "findings": findings,
        "others": [{"nodeid": r.nodeid, "check": r.check, "dtype": r.dtype,
                    "status": r.status, "case": case_label(r), "message": r.message[:500],
                    "anchor": anchors.of[r.nodeid],
                    "card": r.status not in ("passed", "unsupported", "not_run")}
                   for r in other_recs],
        "perf_columns": perf_columns, "perf_rows": perf_rows,
        "benchmarks": benchmarks(run.perf),
        "environment": environment_rows(run),
        "build_label": run.build_label,
        "defect_scope": run.environment.get("known_defects_scope"),
        "unvouched": sum(1 for r in records if r.known_defect is not None
                         and not r.known_defect.vouched and r.status == "known_defect"),
        "coverage": run.coverage,
        "durations": run.durations,
        "total": len(records),
    }


def environment_rows(run: RunRecord) -> list[tuple[str, object]]:
    env = run.environment
    build = env.get("infinicore_build") or {}
    hashes = env.get("library_sha256") or {}
    ident = env.get("infinicore") or {}
    rows: list[tuple[str, object]] = [
        ("InfiniCore", run.build_label),
        ("InfiniCore source", ", ".join(f"{k}={v}" for k, v in (ident.get("source") or {}).items()
                                        if v not in (None, "") and k not in ("label", "key"))),
        ("InfiniCore exports", f"{ident.get('exported_functions', '?')} functions, "
                               f"{len(ident.get('exported_ops') or [])} ops, sha256 of the "
                               f"list {ident.get('exports_digest', '?')}" if ident else None),
        ("InfiniCore version string", env.get("infinicore_version")
         or build.get("infinicore_version")),
        ("backend", env.get("backend") or build.get("backend")),
        ("device under test", env.get("infini_device")),
        ("device name", env.get("device_name")),
        ("INFINI_ROOT (loaded)", env.get("infini_root") or env.get("infini_root_error")),
        ("$INFINI_ROOT", env.get("infini_root_env")),
    ]
    rows += [(f"sha256 {lib}", h) for lib, h in sorted(hashes.items())]
    if build:
        rows.append(("InfiniCore build", ", ".join(
            f"{k}={build[k]}" for k in ("recipe", "sdist_sha256", "flags", "patches",
                                        "built_at") if k in build)))
        left_out = (build.get("ops") or {}).get("left_out") or {}
        if left_out:
            rows.append(("ops left out of the build", ", ".join(sorted(left_out))))
    rows.append(("known defects", env.get("known_defects_scope")))
    where = env.get("placement") or {}
    probe = where.get("probe") or {}
    rows += [("ours ran on", where.get("ours")), ("reference ran on", where.get("reference"))]
    rows.append(("golden", env.get("golden")))
    if probe:
        rows.append(("torch device probe", f"InfiniCore's tests map {probe.get('infini_device')}"
                     f" to {where.get('torch_device_mapped')}: {probe.get('outcome')}"
                     + (" (CPU torch against an accelerator)"
                        if where.get("cpu_reference_for_accelerator") else "")))
    rows.append(("reference cache", env.get("reference_cache")))
    rows.append(("threads", env.get("threads")))
    rows += [
        ("torch", env.get("torch_version")), ("transformers", env.get("transformers_version")),
        ("numpy", env.get("numpy_version")), ("python", env.get("python")),
        ("platform", env.get("platform")), ("project git commit", env.get("git_commit")),
        ("command line", env.get("command_line")), ("started", run.started_at),
        ("duration", f"{fmt_number(run.duration_s, 4)} s"),
        ("pytest exit status", run.pytest_exit_status),
        ("planned checks", run.planned), ("dtypes", ", ".join(run.dtypes)),
        ("tolerance files", ", ".join(run.tolerance_sources)),
    ]
    return [(k, "—" if v in (None, "") else v) for k, v in rows]


def render_html(run: RunRecord, plots: bool = True, junit: str | None = None) -> str:
    view = build_view(run, plots)
    view["junit"] = junit
    view["generated_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return make_env().get_template("report.html.j2").render(**view)


def render_run(run: str | Path, out: str | Path | None = None, plots: bool = True) -> Path:
    """Render <run>/index.html (or `out`) from <run>/results.json, atomically: the page is
    built in memory, written to a temporary file beside the target and renamed, so a
    failure leaves no index.html and no temporary file."""
    src = results_path(run)
    record = RunRecord.load(src)
    target = Path(out) if out is not None else src.parent / "index.html"
    # Linked even if not there yet: pytest's junitxml writes it after the plugin renders.
    html = render_html(record, plots, _safe_href(record.junit_xml))
    atomic_write_text(target, html)
    return target
