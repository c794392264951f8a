"""Several runs (cpu, nvidia, a vendor device, ...) into one scoreboard page: a
check x dtype by run matrix of recorded statuses, each run linked to its own report."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from conformance.results import atomic_write_text

from .render import DTYPE_ORDER, cell, make_env, render_run
from .schema import ResultsError, load_results, results_path


def _label(doc: dict) -> str:
    env = doc["environment"]
    name = env.get("device_name")
    return f"{env.get('infini_device', '?')}" + (f" ({name})" if name else "")


def merge_runs(runs: list[str | Path], out_dir: str | Path) -> Path:
    """Write <out_dir>/index.html (and scoreboard.json), atomically. A run without an
    index.html gets one rendered from its results.json first, so every link works."""
    if not runs:
        raise ResultsError("merge: no run given")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = []
    for run in runs:
        src = results_path(run).resolve()
        doc = load_results(src)
        report = src.parent / "index.html"
        if not report.is_file():
            render_run(src.parent)
        columns.append({"doc": doc, "label": _label(doc), "run_id": doc["run_id"],
                        "verdict": doc["verdict"], "counts": doc["counts"],
                        "dtypes": ", ".join(doc.get("dtypes") or []),
                        "env": doc["environment"],
                        "href": os.path.relpath(report, out.resolve()),
                        "results_href": os.path.relpath(src, out.resolve())})
    ids = [c["run_id"] for c in columns]
    if len(set(ids)) != len(ids):
        raise ResultsError(f"merge: the same run given twice: {ids}")

    keys: dict[tuple[str, str], None] = {}
    for c in columns:
        for r in c["doc"]["results"]:
            keys[(r["check"], str(r["params"].get("dtype", "—")))] = None
    dtype_rank = {d: i for i, d in enumerate(DTYPE_ORDER)}
    group = {"op": 0, "model": 1}
    rows = []
    for check, dtype in sorted(keys, key=lambda k: (group.get(k[0].split("_")[0], 2), k[0],
                                                    dtype_rank.get(k[1], 9), k[1])):
        rows.append({"check": check, "dtype": dtype, "cells": [
            cell([r["status"] for r in c["doc"]["results"] if r["check"] == check and
                  str(r["params"].get("dtype", "—")) == dtype]) for c in columns]})

    env = make_env()
    html = env.get_template("scoreboard.html.j2").render(
        columns=columns, rows=rows, generated_at=time.strftime("%Y-%m-%d %H:%M:%S"))
    board = {"schema_version": 1, "kind": "scoreboard", "runs": [
        {k: c[k] for k in ("run_id", "label", "verdict", "counts", "href")} for c in columns],
        "rows": [{"check": r["check"], "dtype": r["dtype"],
                  "cells": {c["run_id"]: (x and {"status": x["status"], "text": x["text"]})
                            for c, x in zip(columns, r["cells"])}} for r in rows]}
    atomic_write_text(out / "scoreboard.json", json.dumps(board, indent=1) + "\n")
    atomic_write_text(out / "index.html", html)
    return out / "index.html"
