"""Coverage of a run: the ops the tested build exports against the checks that called
them (llama.cpp's `test-backend-ops --show-coverage`). Computed once at the end of a run
and stored in the record; the report and the console only show it."""

from __future__ import annotations

from collections import Counter

from .record import Coverage, RunRecord


def _c_name(py_op: str | None) -> str | None:
    from infinilm_models.runtime.ops.specs import BY_PY

    found = BY_PY.get(py_op or "")
    return found.name if found is not None else None


def coverage_of(run: RunRecord) -> Coverage | None:
    """None when the environment does not say what the build exports (it could not be
    read: then nothing can be said about coverage)."""
    ident = run.environment.get("infinicore") or {}
    exported = ident.get("exported_ops")
    if not isinstance(exported, list):
        return None
    checked: Counter[str] = Counter()
    op_level: Counter[str] = Counter()
    unsupported: Counter[str] = Counter()
    wanted: set[str] = set()
    for r in run.results:
        # the calls made; a check refused before its first call names its op by its case
        ops = set(r.infini_ops) or {n for n in [_c_name(r.op)] if n}
        for op in ops:
            wanted.add(op)
            if r.status == "unsupported":
                unsupported[op] += 1
            elif r.status != "not_run":
                checked[op] += 1
                if r.check.startswith("op_"):
                    op_level[op] += 1
    return Coverage(
        exported=sorted(exported),
        checked={op: checked[op] for op in sorted(checked) if op in exported},
        op_checks={op: op_level[op] for op in sorted(op_level) if op in exported},
        unchecked=sorted(set(exported) - set(checked)),
        not_exported=sorted(wanted - set(exported)),
        unsupported=dict(sorted(unsupported.items())),
        exports_known=bool(ident.get("exports_known", True)))


def summary_lines(cov: Coverage, verbose: bool = False, width: int = 30) -> list[str]:
    """The console's coverage list (-v lists every op without a check)."""
    lines = [f"coverage: {len(cov.checked)} of {len(cov.exported)} exported ops checked "
             f"({len(cov.op_checks)} by op-level checks); {len(cov.unchecked)} exported "
             "without a check"
             + ("" if cov.exports_known else " (exports not fully readable: ELF tables?)")]
    if cov.checked:
        lines.append("  checked: " + ", ".join(f"{op}({n})" for op, n in cov.checked.items()))
    if cov.unchecked:
        shown = cov.unchecked if verbose else cov.unchecked[:width]
        more = len(cov.unchecked) - len(shown)
        lines.append("  exported, no check: " + ", ".join(shown)
                     + (f", ... {more} more (-v lists all; the report has them)" if more else ""))
    if cov.not_exported:
        lines.append("  checked for, not exported by this build (unsupported): "
                     + ", ".join(cov.not_exported))
    if cov.unsupported:
        lines.append("  unsupported checks by op: "
                     + ", ".join(f"{op}({n})" for op, n in cov.unsupported.items()))
    return lines
