"""The per-dtype sections of a report: per model, its checks' comparisons, measurements,
localizations and per-layer error; per op, its worst case, properties and every case."""

from __future__ import annotations

from conformance.record import CheckRecord

from .cards import callout, comparison_label, comparison_row, measurement_row, notes
from .format import Anchors, OpAnchors, case_label, cell, num, records_cell, slug
from .layers import layer_groups, split_groups

# A check's own card exists unless it passed (or was never run / not supported).
NO_CARD = ("passed", "unsupported", "not_run")


def model_section(model: str, dtype: str, records: list[CheckRecord], anchors: Anchors,
                  ops: OpAnchors, plots: bool, layer_anchors: dict[str, str]) -> dict:
    anchor = slug("cmp", model, dtype)
    checks, layers, callouts, amplified = [], [], [], []
    for r in sorted(records, key=lambda r: (r.check, r.nodeid)):
        case = case_label(r, ("dtype", "model_name"))
        rows = [comparison_row(c) for c in r.comparisons] + \
            [measurement_row(m) for m in r.measurements]
        checks.append({"check": r.check, "case": case, "status": r.status,
                       "message": r.message[:1500], "rows": rows, "notes": notes(r),
                       "anchor": anchors.of[r.nodeid], "card": r.status not in NO_CARD,
                       "known_defect": r.known_defect.id if r.known_defect else None})
        for loc in r.localization:
            callouts.append({**callout(loc, r, ops), "check": r.check,
                             "anchor": anchors.of[r.nodeid], "status": r.status})
        a = r.amplification
        if a is not None:
            amplified.append({"check": r.check, "tensor": a.tensor, "layer": a.layer,
                              "submodule": a.submodule, "nmse": a.nmse,
                              "strict_threshold": a.strict_threshold,
                              "isolated_nmse": a.isolated.nmse if a.isolated else None,
                              "isolated_threshold": a.isolated.threshold if a.isolated
                              else None})
        if r.tensors:
            la = slug("layers", r.nodeid)
            layer_anchors[r.nodeid] = la
            shown, folded = split_groups(layer_groups(r, f"{r.check} {model} {dtype}", plots,
                                                      la))
            layers.append({"check": r.check, "case": case, "status": r.status, "anchor": la,
                           "groups": shown, "folded": folded})
    return {"model": model, "dtype": dtype, "anchor": anchor, "checks": checks,
            "layers": layers, "callouts": callouts, "amplified": amplified,
            "cell": cell([r.status for r in records])}


def op_section(dtype: str, op: str, records: list[CheckRecord], anchors: Anchors) -> dict:
    worst = None  # the accuracy comparison closest to (or furthest past) its NMSE bound
    properties: dict[str, dict] = {}
    max_abs = None
    for r in records:
        for c in r.comparisons:
            nmse, bound = num(c.metrics.get("nmse")), c.bound.nmse if c.bound else None
            if c.kind == "accuracy" and nmse is not None and bound:
                ratio = nmse / bound
                if worst is None or ratio > worst["ratio"]:
                    worst = {"ratio": ratio, "nmse": nmse, "bound": bound,
                             "case": case_label(r, ("dtype", "op"))}
            if c.kind == "accuracy" and num(c.metrics.get("max_abs")) is not None:
                max_abs = max(max_abs or 0.0, float(c.metrics["max_abs"]))
            if c.kind == "property":
                p = properties.setdefault(c.what, {"label": comparison_label(c), "n": 0,
                                                   "held": 0, "max_ulp": None,
                                                   "fraction": None, "explained": 0})
                p["n"] += 1
                p["held"] += c.passed
                p["explained"] += c.explained_by is not None
                for k in ("max_ulp", "fraction"):
                    v = num(c.metrics.get(k))
                    if v is not None:
                        p[k] = v if p[k] is None else max(p[k], v)
    return {
        "op": op, "checks": sorted({r.check for r in records}),
        "anchor": OpAnchors.anchor(dtype, op), "cell": records_cell(records),
        "worst": worst, "max_abs": max_abs, "properties": list(properties.values()),
        "records": [{"case": case_label(r, ("dtype", "op")), "status": r.status,
                     "nodeid": r.nodeid, "message": r.message[:1500],
                     "anchor": anchors.of[r.nodeid], "card": r.status not in NO_CARD,
                     "comparisons": [comparison_row(c) for c in r.comparisons]}
                    for r in sorted(records, key=lambda r: r.nodeid)]}
