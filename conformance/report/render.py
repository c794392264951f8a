"""results.json -> one self-contained index.html (inline CSS, plots as data URIs).

The renderer only arranges what the run recorded: statuses and the verdict are read from
results.json, never recomputed. Counting statuses per matrix cell and picking which
status colours a cell (the most severe one present) is presentation, not judgement.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

import jinja2

from conformance.results import STATUSES, atomic_write_text

from .plots import per_layer_plot
from .schema import load_results, results_path

# Display order of severity: a cell with one crash among passes is coloured as crashed.
SEVERITY = ("crashed", "failed", "error", "known_defect", "unsupported", "passed")
SHORT = {"passed": "pass", "failed": "fail", "crashed": "crash", "error": "error",
         "unsupported": "unsup", "known_defect": "known"}
DTYPE_ORDER = ("f32", "f16", "bf16")
METRIC_COLUMNS = ("max_abs", "max_rel", "mean_abs", "nmse", "sqnr_db", "cosine")


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


def cell(statuses: list[str]) -> dict | None:
    """A matrix cell: counts per status, coloured by the most severe status present."""
    if not statuses:
        return None
    counts = Counter(statuses)
    worst = next(s for s in SEVERITY if counts.get(s))
    parts = [f"{counts[s]} {SHORT[s]}" for s in SEVERITY if counts.get(s)]
    return {"status": worst, "text": " · ".join(parts), "n": len(statuses),
            "title": ", ".join(f"{counts[s]} {s}" for s in SEVERITY if counts.get(s))}


def _dtype(r: dict) -> str:
    return str(r["params"].get("dtype", "—"))


def _ordered_dtypes(doc: dict, records: list[dict]) -> list[str]:
    seen = {_dtype(r) for r in records}
    order = [d for d in doc.get("dtypes") or DTYPE_ORDER if d in seen]
    return order + sorted(seen - set(order))


def _slug(*parts: str) -> str:
    raw = "-".join(parts)
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in raw)


def _tol(t: dict | None) -> str:
    if not t:
        return ""
    if "k" in t:
        return f"{t.get('k'):g} x ref + {t.get('floor'):g} ({t.get('source', '')})"
    s = f"atol={fmt_number(t.get('atol'))} rtol={fmt_number(t.get('rtol'))}"
    if t.get("nmse") is not None:
        s += f" nmse≤{fmt_number(t.get('nmse'))}"
    return s


def _case(r: dict, drop: tuple[str, ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in r["params"].items() if k not in drop) or r["test"]


def measurement_rows(r: dict) -> list[dict]:
    """Every metric set a check recorded: its tolerance comparisons and the metric
    objects inside `info` (logits, cache), as table rows."""
    rows = []
    for c in r["comparisons"]:
        rows.append({"label": c["what"], "metrics": c["metrics"], "extra": {},
                     "ref_nmse": None, "bound": _tol(c.get("tolerance")),
                     "passed": c["passed"]})
    for key, v in r["info"].items():
        # Shown elsewhere: the divergence callout and the per-tensor table's bounds.
        if not isinstance(v, dict) or key in ("first_divergence", "tolerance", "gate"):
            continue
        if isinstance(v.get("metrics"), dict):
            rows.append({"label": key, "metrics": v["metrics"], "extra": v.get("logits") or {},
                         "ref_nmse": (v.get("reference_metrics") or {}).get("nmse"),
                         "bound": "", "passed": None})
        elif "nmse" in v:
            rows.append({"label": key, "metrics": v, "extra": {}, "ref_nmse": None,
                         "bound": "", "passed": None})
    return rows


def _notes(r: dict) -> list[str]:
    """Scalar facts of `info` (perplexities, sizes) and short summaries of the rest."""
    notes = []
    for key, v in r["info"].items():
        if key in ("per_tensor", "first_divergence", "tolerance", "gate"):
            continue
        if isinstance(v, (int, float, str, bool)) or v is None:
            notes.append(f"{key} = {fmt_number(v, 5)}")
        elif key == "generations" and isinstance(v, list):
            firsts = [g.get("first_divergence") for g in v if isinstance(g, dict)]
            notes.append(f"generations: {len(v)} prompt(s); first divergent step per prompt: "
                         + ", ".join("none" if f is None else json.dumps(f) for f in firsts))
    return notes


def _op_section(dtype: str, records: list[dict]) -> list[dict]:
    by_check: dict[str, list[dict]] = {}
    for r in records:
        by_check.setdefault(r["check"], []).append(r)
    rows = []
    for check in sorted(by_check):
        recs = by_check[check]
        worst = None  # the comparison closest to (or furthest past) its NMSE bound
        for r in recs:
            for c in r["comparisons"]:
                nmse = c["metrics"].get("nmse")
                bound = (c.get("tolerance") or {}).get("nmse")
                if isinstance(nmse, (int, float)) and bound:
                    ratio = float(nmse) / float(bound)
                    if worst is None or ratio > worst["ratio"]:
                        worst = {"ratio": ratio, "nmse": nmse, "bound": bound,
                                 "case": _case(r, ("dtype",))}
        rows.append({
            "check": check, "anchor": _slug("op", dtype, check.removeprefix("op_")),
            "cell": cell([r["status"] for r in recs]), "worst": worst,
            "max_abs": max((float(c["metrics"]["max_abs"]) for r in recs
                            for c in r["comparisons"] if "max_abs" in c["metrics"]),
                           default=None),
            "records": [{"case": _case(r, ("dtype",)), "status": r["status"],
                         "nodeid": r["nodeid"], "message": r["message"][:1500],
                         "comparisons": [{"what": c["what"], "metrics": c["metrics"],
                                          "bound": _tol(c.get("tolerance"))}
                                         for c in r["comparisons"]]}
                        for r in recs]})
    return rows


def _comparison(model: str, dtype: str, records: list[dict], op_anchors: dict,
                plots: bool) -> dict:
    checks = []
    activation = None
    for r in sorted(records, key=lambda r: (r["check"], r["nodeid"])):
        checks.append({"check": r["check"], "case": _case(r, ("model_name", "dtype")),
                       "status": r["status"], "message": r["message"][:1500],
                       "rows": measurement_rows(r), "notes": _notes(r),
                       "known_defect": (r.get("known_defect") or {}).get("id")})
        per_tensor = r["info"].get("per_tensor")
        if r["check"] == "model_activations" and isinstance(per_tensor, list) and per_tensor:
            first = r["info"].get("first_divergence")
            ops = [{"name": op, "anchor": op_anchors.get(op)} for op in
                   (first or {}).get("ops", [])]
            activation = {
                "rows": per_tensor, "first": first, "first_ops": ops,
                "status": r["status"], "tolerance": _tol(r["info"].get("tolerance")),
                "gate": _tol(r["info"].get("gate")),
                "plot": per_layer_plot(per_tensor, first, f"{model} {dtype}: error per layer")
                if plots else None}
    return {"model": model, "dtype": dtype, "anchor": _slug("cmp", model, dtype),
            "checks": checks, "activation": activation,
            "cell": cell([r["status"] for r in records])}


def build_view(doc: dict, plots: bool = True) -> dict:
    records = doc["results"]
    model_recs = [r for r in records if "model_name" in r["params"]]
    op_recs = [r for r in records if r["check"].startswith("op_") and r not in model_recs]
    other_recs = [r for r in records if r not in model_recs and r not in op_recs]
    dtypes = _ordered_dtypes(doc, records)
    models = list(dict.fromkeys(str(r["params"]["model_name"]) for r in model_recs))
    model_checks = sorted({r["check"] for r in model_recs})
    op_checks = sorted({r["check"] for r in op_recs})

    def statuses(recs, **match) -> list[str]:
        return [r["status"] for r in recs if all(
            (_dtype(r) if k == "dtype" else str(r["params"].get(k, r.get(k)))) == v
            for k, v in match.items())]

    # Each matrix gets only the dtype columns its own checks have (no empty "—" column).
    model_dtypes = _ordered_dtypes(doc, model_recs)
    op_dtypes = _ordered_dtypes(doc, op_recs)
    model_matrix = [{"model": m, "anchors": {d: _slug("cmp", m, d) for d in model_dtypes},
                     "cells": {c: {d: cell(statuses(model_recs, model_name=m, check=c,
                                                    dtype=d)) for d in model_dtypes}
                               for c in model_checks}} for m in models]
    op_matrix = [{"check": c, "cells": {d: cell(statuses(op_recs, check=c, dtype=d))
                                        for d in op_dtypes},
                  "anchors": {d: _slug("op", d, c.removeprefix("op_")) for d in op_dtypes}}
                 for c in op_checks]
    other_matrix = [{"check": c, "cell": cell(statuses(other_recs, check=c))}
                    for c in sorted({r["check"] for r in other_recs})]

    sections = []
    for d in dtypes:
        ops = _op_section(d, [r for r in op_recs if _dtype(r) == d])
        anchors = {row["check"].removeprefix("op_"): row["anchor"] for row in ops}
        # Sub-module op names map onto op checks (gemm -> op_gemm; add -> op_elementwise).
        if "elementwise" in anchors:
            anchors.setdefault("add", anchors["elementwise"])
            anchors.setdefault("mul", anchors["elementwise"])
        comparisons = [_comparison(m, d, [r for r in model_recs if _dtype(r) == d and
                                          str(r["params"]["model_name"]) == m], anchors, plots)
                       for m in models]
        sections.append({"dtype": d, "ops": ops,
                         "comparisons": [c for c in comparisons if c["checks"]]})

    attention = [r for r in records if r["status"] != "passed"]
    attention.sort(key=lambda r: (SEVERITY.index(r["status"]), r["nodeid"]))
    env = doc["environment"]
    return {
        "doc": doc, "verdict": doc["verdict"], "counts": doc["counts"],
        "statuses": STATUSES, "severity": SEVERITY, "dtypes": dtypes,
        "model_dtypes": model_dtypes, "op_dtypes": op_dtypes,
        "models": models, "model_checks": model_checks, "model_matrix": model_matrix,
        "op_matrix": op_matrix, "other_matrix": other_matrix, "sections": sections,
        "attention": [{"status": r["status"], "nodeid": r["nodeid"],
                       "message": r["message"][:2000],
                       "known_defect": (r.get("known_defect") or {}).get("id")}
                      for r in attention],
        "environment": environment_rows(doc, env),
        "total": len(records),
    }


def environment_rows(doc: dict, env: dict) -> list[tuple[str, object]]:
    build = env.get("infinicore_build") or {}
    hashes = env.get("library_sha256") or {}
    rows: list[tuple[str, object]] = [
        ("InfiniCore version", env.get("infinicore_version") or build.get("infinicore_version")),
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
    rows += [
        ("torch", env.get("torch_version")), ("transformers", env.get("transformers_version")),
        ("numpy", env.get("numpy_version")), ("python", env.get("python")),
        ("platform", env.get("platform")), ("project git commit", env.get("git_commit")),
        ("command line", env.get("command_line")), ("started", doc.get("started_at")),
        ("duration", f"{fmt_number(doc.get('duration_s'), 4)} s"),
        ("pytest exit status", doc.get("pytest_exit_status")),
        ("dtypes", ", ".join(doc.get("dtypes") or [])),
        ("tolerance files", ", ".join(doc.get("tolerance_sources") or [])),
    ]
    return [(k, "—" if v in (None, "") else v) for k, v in rows]


def render_html(doc: dict, plots: bool = True, junit: str | None = None) -> str:
    view = build_view(doc, plots)
    view["junit"] = junit
    view["generated_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return make_env().get_template("report.html.j2").render(**view)


def render_run(run: str | Path, out: str | Path | None = None, plots: bool = True) -> Path:
    """Render <run>/index.html (or `out`) from <run>/results.json, atomically: the page is
    built in memory, written to a temporary file beside the target and renamed, so a
    failure leaves no index.html and no temporary file."""
    src = results_path(run)
    doc = load_results(src)
    target = Path(out) if out is not None else src.parent / "index.html"
    # Linked even if not there yet: pytest's junitxml writes it after the plugin renders.
    html = render_html(doc, plots, doc.get("junit_xml"))
    atomic_write_text(target, html)
    return target

