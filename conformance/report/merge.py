"""Several runs (cpu, nvidia, a vendor device, ...) into one scoreboard page: a
check x dtype by run matrix of recorded statuses, each run linked to its own report.
Runs are read through `RunRecord.load`; the statuses and verdicts are each run's own."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from conformance.policy import lines as policy_lines
from conformance.policy import verdict_text
from conformance.record import RecordError, RunRecord, results_path
from conformance.results import atomic_write_text

from .render import DTYPE_ORDER, NO_DTYPE, cell, dtype_of, make_env, render_run


def _label(run: RunRecord) -> str:
    env = run.environment
    name = env.get("device_name")
    return f"{env.get('infini_device', '?')}" + (f" ({name})" if name else "")


def merge_runs(runs: list[str | Path], out_dir: str | Path) -> Path:
    """Write <out_dir>/index.html (and scoreboard.json), atomically. A run without an
    index.html gets one rendered from its results.json first, so every link works."""
    if not runs:
        raise RecordError("merge: no run given")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RecordError(f"merge -o {out}: exists and is not a directory")
    loaded = []
    for run in runs:  # every run read and validated before anything is written
        src = results_path(run).resolve()
        loaded.append((src, RunRecord.load(src)))
    ids = [r.run_id for _, r in loaded]
    if len(set(ids)) != len(ids):
        raise RecordError(f"merge: the same run given twice: {ids}")
    out.mkdir(parents=True, exist_ok=True)
    columns = []
    for src, record in loaded:
        report = src.parent / "index.html"
        if not report.is_file():
            render_run(src.parent)
        planned = max(record.planned, len(record.results))
        columns.append({"record": record, "label": _label(record), "run_id": record.run_id,
                        "verdict": record.verdict, "counts": record.counts,
                        "verdict_text": verdict_text(record.verdict, record.environment),
                        "policy": policy_lines(record.environment.get("policy")),
                        "planned": planned, "not_run": record.counts.get("not_run", 0),
                        "dtypes": ", ".join(record.dtypes), "env": record.environment,
                        "build": record.build_label,
                        "href": os.path.relpath(report, out.resolve()),
                        "results_href": os.path.relpath(src, out.resolve())})

    # (check, dtype) -> per run, the statuses recorded there.
    statuses: dict[tuple[str, str], dict[str, list[str]]] = {}
    for c in columns:
        for r in c["record"].results:
            statuses.setdefault((r.check, dtype_of(r)), {}).setdefault(
                c["run_id"], []).append(r.status)
    dtype_rank = {d: i for i, d in enumerate((*DTYPE_ORDER, NO_DTYPE))}
    group = {"op": 0, "model": 1}
    rows = []
    for check, dtype in sorted(statuses, key=lambda k: (group.get(k[0].split("_")[0], 2), k[0],
                                                        dtype_rank.get(k[1], 3), k[1])):
        per_run = statuses[(check, dtype)]
        rows.append({"check": check, "dtype": dtype,
                     "cells": [cell(per_run.get(c["run_id"], [])) for c in columns]})

    env = make_env()
    html = env.get_template("scoreboard.html.j2").render(
        columns=columns, rows=rows, generated_at=time.strftime("%Y-%m-%d %H:%M:%S"))
    board = {"schema_version": 2, "kind": "scoreboard", "runs": [
        {k: c[k] for k in ("run_id", "label", "build", "verdict", "verdict_text", "policy",
                           "counts", "planned", "href")}
        for c in columns],
        "rows": [{"check": r["check"], "dtype": r["dtype"],
                  "cells": {c["run_id"]: (x and {"status": x["status"], "text": x["text"]})
                            for c, x in zip(columns, r["cells"])}} for r in rows]}
    atomic_write_text(out / "scoreboard.json", json.dumps(board, indent=1) + "\n")
    atomic_write_text(out / "index.html", html)
    return out / "index.html"
