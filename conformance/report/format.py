"""Formatting shared by every view of a run: numbers, anchors, matrix cells, case labels
and bounds as text. Presentation only: nothing here decides a status."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from conformance.record import Bound, CheckRecord, RunRecord

# Display order of severity: a cell with one crash among passes is coloured as crashed.
SEVERITY = ("crashed", "failed", "error", "not_run", "known_defect", "unsupported", "passed")
SHORT = {"passed": "pass", "failed": "fail", "crashed": "crash", "error": "error",
         "not_run": "not run", "unsupported": "unsup", "known_defect": "known"}
DTYPE_ORDER = ("f32", "f16", "bf16")
NO_DTYPE = "—"
MESSAGE_CHARS = 2000


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


def records_cell(records: list[CheckRecord]) -> dict | None:
    return cell([r.status for r in records], sum(1 for r in records if r.findings))


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


def safe_href(path: str | None) -> str | None:
    """A relative path to link; never a URL with a scheme (javascript:, http:)."""
    if not path or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", path):
        return None
    return path.replace("\\", "/")


def num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def where_label(phase: str, step: int | None) -> str:
    if phase == "decode":
        return "decode" + (f" step {step}" if step is not None else "")
    return phase + (f" step {step}" if step not in (None, 0) else "")


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
