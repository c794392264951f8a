"""The status matrices at the top of a report: model x check x dtype, parallel layout x
check x dtype, op x dtype (with a graph-capture column) and the other checks."""

from __future__ import annotations

from conformance.record import CheckRecord, RunRecord

from .format import OpAnchors, cell, dtype_of, ordered_dtypes, records_cell, slug

# The check whose records say whether an op can be captured into a device graph
# (conformance/ops/test_op_capture.py): a column of the op matrix, not a dtype cell.
CAPTURE_CHECK = "op_capture"


def matrices(run: RunRecord, model_recs: list[CheckRecord], op_recs: list[CheckRecord],
             other_recs: list[CheckRecord]) -> dict:
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
        return records_cell(by_cell.get(key, []))

    # Each matrix gets only the dtype columns its own checks have.
    model_dtypes = ordered_dtypes(run, model_recs)
    op_dtypes = ordered_dtypes(run, op_recs)
    other_dtypes = ordered_dtypes(run, other_recs)
    models = list(dict.fromkeys(r.model for r in model_recs))
    model_checks = sorted({r.check for r in model_recs})
    op_names = sorted({r.op for r in op_recs}, key=lambda o: (
        min(r.check for r in op_recs if r.op == o), o))
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
    other_checks = sorted({r.check for r in other_recs})
    return {
        "models": models, "model_checks": model_checks, "model_matrix": model_matrix,
        "model_dtypes": model_dtypes, "op_dtypes": op_dtypes, "other_dtypes": other_dtypes,
        "op_names": op_names, "op_matrix": op_matrix, "op_capture_column": bool(captured),
        "other_matrix": [{"check": c, "cells": {d: cell_of("other", c, d)
                                                for d in other_dtypes}}
                         for c in other_checks],
        **parallel_matrix(run, run.results),
    }


def parallel_matrix(run: RunRecord, records: list[CheckRecord]) -> dict:
    """Parallel layouts (tp/pp) across the checks that run them, summed over models."""
    par_recs = [r for r in records if isinstance(r.params.get("layout"), str)]
    layouts = list(dict.fromkeys(r.params["layout"] for r in par_recs))
    checks = sorted({r.check for r in par_recs})
    dtypes = ordered_dtypes(run, par_recs)
    cells: dict[tuple, list[str]] = {}
    for r in par_recs:
        cells.setdefault((r.params["layout"], r.check, dtype_of(r)), []).append(r.status)
    return {"parallel_matrix": [{"layout": lay,
                                 "cells": {c: {d: cell(cells.get((lay, c, d), []))
                                               for d in dtypes} for c in checks}}
                                for lay in layouts],
            "parallel_checks": checks, "parallel_dtypes": dtypes}
