"""What a report says about one check: its comparisons as table rows, its measurements
and generations, the facts it ran with, its localizations, and the card of a check that
did not pass. Each reads a typed part of the record (record.CheckRecord)."""

from __future__ import annotations

from conformance.record import CheckRecord, Comparison, Generation, Localization, Measurement

from .format import (
    MESSAGE_CHARS,
    Anchors,
    OpAnchors,
    describe,
    dtype_of,
    fmt_number,
    safe_href,
    where_label,
)
from .resolution import resolution

METRIC_COLUMNS = ("max_abs", "max_rel", "mean_abs", "nmse", "sqnr_db", "cosine")
# Metrics a property comparison is read by (IEEE rounding: how far, how often, which way).
PROPERTY_METRICS = ("max_ulp", "fraction", "mismatches", "below", "above", "toward_zero")
METRIC_NAMES = {"max_ulp": "max ulp", "toward_zero": "toward zero", "max_abs": "max abs",
                "max_rel": "max rel", "mean_abs": "mean abs", "sqnr_db": "SQNR dB"}
# Comparisons listed in a check's card before the rest (all within bound) are folded away.
CARD_COMPARISONS = 8
TOKENS_SHOWN = 24


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
    return ", ".join(f"{METRIC_NAMES.get(k, k)} {fmt_number(m[k])}" for k in keys[:10])


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


def measurement_row(m: Measurement) -> dict:
    """A reported, unjudged measurement as a row of the metrics table."""
    text = ", ".join(f"{k} {fmt_number(v)}" for k, v in m.values.items())
    if m.reference:
        text += "; reference: " + ", ".join(f"{k} {fmt_number(v)}"
                                            for k, v in m.reference.items())
    if m.note:
        text += f" ({m.note})"
    return {"label": m.what, "kind": "info", "what": m.what, "passed": None, "state": "",
            "against": False, "reason": "", "metrics": m.values, "summary": text,
            "extra": {}, "ref_nmse": m.reference.get("nmse"), "bound": "reported, not judged",
            "explained_by": None, "envelope": "", "standard": False}


def _tokens(rows: list[list[int]]) -> str:
    flat = rows[0] if len(rows) == 1 else [t for r in rows for t in r]
    text = " ".join(str(t) for t in flat[:TOKENS_SHOWN])
    return text + (" …" if len(flat) > TOKENS_SHOWN else "")


def generation_line(g: Generation) -> str:
    """Both sides' tokens and where they part, in one line."""
    n = max((len(r) for r in g.ours_tokens), default=0)
    shape = f"{len(g.ours_tokens)} row(s) x {n} tokens"
    if g.first_divergence is None:
        where = "identical"
    else:
        where = f"first divergence at step {g.first_divergence}, row {g.row}"
        if g.margin is not None:
            where += (f" ({g.reference}'s top-2 margin {fmt_number(g.margin)}, near tie below "
                      f"{fmt_number(g.allowed_margin)})")
    return (f"{g.what}: {shape}, {where}; {g.ours}: {_tokens(g.ours_tokens)} | "
            f"{g.reference}: {_tokens(g.reference_tokens)}")


def notes(r: CheckRecord) -> list[str]:
    """The facts a check ran with (its setup), a line per pair of greedy paths and, for a
    model check, the smallest defect its bounds resolve (resolution.py)."""
    out = [f"{k} = {fmt_number(v, 5)}" for k, v in r.setup.items()
           if k != "collection_error"]
    firsts = [g.first_divergence for g in r.generations]
    if firsts:
        out.append(f"greedy paths: {len(firsts)}; first divergent step of each: "
                   + ", ".join("none" if f is None else str(f) for f in firsts))
    resolved = resolution(r)
    if resolved:
        out.append(resolved)
    return out


def callout(loc: Localization, r: CheckRecord, ops: OpAnchors) -> dict:
    return {"where": where_label(loc.phase, loc.step), "phase": loc.phase, "step": loc.step,
            "layer": loc.layer, "submodule": loc.submodule, "tensor": loc.tensor,
            "isolated": loc.isolated, "origin": loc.origin, "nmse": loc.nmse,
            "threshold": loc.threshold,
            "description": loc.description,
            "ops": [ops.link(dtype_of(r), op) for op in loc.ops]}


def card(r: CheckRecord, anchors: Anchors, ops: OpAnchors, layer_anchor: str | None,
         reproduce: str | None = None) -> dict:
    """Everything the record says about a check that did not pass; `reproduce`: the
    command that runs it again (conformance/reproduce.py)."""
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
    href = safe_href(r.bundle)
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
            "generations": [generation_line(g) for g in r.generations],
            "measurements": [measurement_row(m) for m in r.measurements],
            "notes": notes(r), "layer_anchor": layer_anchor, "reproduce": reproduce}
