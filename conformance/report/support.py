"""The support probe's matrix (a `--support` run, conformance/support.py) as the report
shows it: one table per source (the op checks' cases, each probed model's calls), op x
dtype, a cell per (op, dtype) coloured by its state. Presentation only: the cells are the
record's."""

from __future__ import annotations

from conformance.record import RunRecord, SupportCell

# state -> the status colour it borrows (accepted green, partly refused amber, refused or
# not exported grey as unsupported checks are, a crash purple)
COLOURS = {"supported": "s-passed", "partial": "s-known_defect", "refused": "s-unsupported",
           "not_exported": "s-unsupported", "crashed": "s-crashed"}


def _cell(c: SupportCell | None) -> dict:
    from conformance.support import cell_text

    if c is None:
        return {"text": "", "css": "s-none", "title": "no case of this dtype"}
    title = f"{c.cases} distinct signature(s), {c.refused} refused"
    if c.example:
        title += f"; e.g. {c.example}"
    return {"text": cell_text(c, marks=False), "css": COLOURS[c.state], "title": title}


def support_view(run: RunRecord) -> dict | None:
    if run.support is None:
        return None
    from conformance.support import source_title, tables

    m = run.support
    return {
        "descriptors": m.descriptors, "seconds": m.seconds, "models": m.models,
        "tables": [{"title": source_title(source), "dtypes": dtypes,
                    "rows": [{"op": op, "cells": [_cell(by.get(d)) for d in dtypes]}
                             for op, by in rows]}
                   for source, dtypes, rows in tables(m)],
        "refused": [{"op": c.op, "dtype": c.dtype, "source": c.source,
                     "statuses": ", ".join(c.statuses), "example": c.example}
                    for c in m.cells if c.state in ("partial", "refused") and c.example],
    }
