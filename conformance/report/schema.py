"""Reading results.json: a thin shim over `conformance.record`, where the schema (SCHEMA.md)
is defined and validated in one place.

The report, compare and merge read runs only through `RunRecord.load`, so a missing
file, corrupt JSON, an unknown schema version or a wrong field is one `RecordError`
naming the file and the field, never a KeyError deep inside a template.
"""

from __future__ import annotations

from pathlib import Path

from conformance.record import SCHEMA_VERSION, RecordError, RunRecord, results_path

ResultsError = RecordError


def load_results(path: str | Path) -> RunRecord:
    """A run directory (or reports/latest) or a results.json file, validated."""
    return RunRecord.load(path)


__all__ = ["SCHEMA_VERSION", "ResultsError", "load_results", "results_path"]
