"""Everything the report template shows, assembled from one RunRecord: matrices, the
sections per dtype, the cards of checks that did not pass, not-run and unsupported lists,
findings, performance, coverage, durations and the environment."""

from __future__ import annotations

from conformance.record import FAILING, STATUSES, CheckRecord, RunRecord
from conformance.reproduce import command as rerun_command

from .cards import card, comparison_row
from .environment import benchmarks, environment_rows, perf_rows
from .format import SEVERITY, Anchors, OpAnchors, case_label, dtype_of, ordered_dtypes, slug
from .matrices import matrices
from .sections import NO_CARD, model_section, op_section
from .support import support_view


def build_view(run: RunRecord, plots: bool = True) -> dict:
    records = run.results
    anchors = Anchors(records)
    model_recs = [r for r in records if r.model is not None]
    op_recs = [r for r in records if r.model is None and r.op is not None]
    other_recs = [r for r in records if r.model is None and r.op is None]
    ops = OpAnchors(op_recs)
    mx = matrices(run, model_recs, op_recs, other_recs)

    layer_anchors: dict[str, str] = {}
    sections = []
    for d in ordered_dtypes(run, records):
        comparisons = []
        for m in mx["models"]:
            recs = [r for r in model_recs if r.model == m and dtype_of(r) == d]
            if recs:
                comparisons.append(model_section(m, d, recs, anchors, ops, plots,
                                                 layer_anchors))
        op_rows = [op_section(d, o, recs, anchors) for o in mx["op_names"]
                   if (recs := [r for r in op_recs if r.op == o and dtype_of(r) == d])]
        if comparisons or op_rows:
            sections.append({"dtype": d, "ops": op_rows, "comparisons": comparisons})

    def cards(statuses) -> list[dict]:
        chosen = [r for r in records if r.status in statuses]
        chosen.sort(key=lambda r: (SEVERITY.index(r.status), r.nodeid))
        return [card(r, anchors, ops, layer_anchors.get(r.nodeid),
                     rerun(run.environment.get("reproduce"), r)) for r in chosen]

    perf_columns, perf_table = perf_rows(records)
    return {
        "run": run, "verdict": run.verdict, "counts": run.counts, "statuses": STATUSES,
        "severity": SEVERITY, "dtypes": ordered_dtypes(run, records),
        "planned": max(run.planned, len(records)),
        "not_run_total": run.counts.get("not_run", 0),
        **mx, "sections": sections,
        "failures": cards(FAILING - {"not_run"}), "known": cards({"known_defect"}),
        "not_run": _not_run(records), "unsupported": _unsupported(records),
        "findings": _findings(records, anchors),
        "others": [{"nodeid": r.nodeid, "check": r.check, "dtype": r.dtype,
                    "status": r.status, "case": case_label(r), "message": r.message[:500],
                    "anchor": anchors.of[r.nodeid], "card": r.status not in NO_CARD}
                   for r in other_recs],
        "perf_columns": perf_columns, "perf_rows": perf_table,
        "benchmarks": benchmarks(run.perf),
        "environment": environment_rows(run),
        "build_label": run.build_label,
        "defect_scope": run.environment.get("known_defects_scope"),
        "unvouched": sum(1 for r in records if r.known_defect is not None
                         and not r.known_defect.vouched and r.status == "known_defect"),
        "coverage": run.coverage,
        "support": support_view(run),
        "durations": run.durations,
        "total": len(records),
    }


def rerun(ctx: dict | None, r: CheckRecord) -> str | None:
    """The command that runs `r` again, where the run recorded how (reproduce.py)."""
    if not ctx or "::" not in r.nodeid or r.nodeid.startswith("known_defects.toml"):
        return None
    return rerun_command(ctx, r.nodeid, r.dtype, r.model)


def _not_run(records: list[CheckRecord]) -> list[dict]:
    groups: dict[str, list[CheckRecord]] = {}
    for r in records:
        if r.status == "not_run":
            groups.setdefault(r.not_run_reason or "no reason recorded", []).append(r)
    return [{"reason": reason, "records": [
        {"nodeid": r.nodeid, "model": r.model, "op": r.op, "dtype": r.dtype,
         "case": case_label(r, ("dtype", "model_name", "op"))} for r in recs]}
        for reason, recs in groups.items()]


def _unsupported(records: list[CheckRecord]) -> list[dict]:
    return [{"nodeid": r.nodeid, "dtype": r.dtype, "op": r.op, "model": r.model,
             "message": r.message[:500]} for r in records if r.status == "unsupported"]


def _findings(records: list[CheckRecord], anchors: Anchors) -> list[dict]:
    return [{"nodeid": r.nodeid, "anchor": anchors.of[r.nodeid], "status": r.status,
             "model": r.model, "op": r.op, "dtype": r.dtype,
             "case": case_label(r, ("dtype", "model_name", "op")),
             "section": (slug("cmp", r.model, dtype_of(r)) if r.model is not None else
                         OpAnchors.anchor(dtype_of(r), r.op) if r.op is not None else None),
             **comparison_row(c)}
            for r in records for c in r.findings]
