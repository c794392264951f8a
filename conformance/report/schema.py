"""Reading and validating results.json (schema documented in SCHEMA.md).

The report, compare and merge read results only through `load_results`, so a missing
file, corrupt JSON or an unknown schema version is one clear error naming the file and
the field, never a KeyError deep inside a template.
"""

from __future__ import annotations

import json
from pathlib import Path

from conformance.results import SCHEMA_VERSION, STATUSES

SUPPORTED_VERSIONS = (1,)
VERDICTS = ("pass", "fail")
_NUMBER = (int, float)

# Required fields and their JSON types; extra fields are allowed (additive changes do not
# bump the version, see SCHEMA.md).
TOP_LEVEL = {
    "schema_version": int,
    "run_id": str,
    "verdict": str,
    "counts": dict,
    "started_at": str,
    "duration_s": _NUMBER,
    "pytest_exit_status": int,
    "environment": dict,
    "results": list,
}
RESULT = {
    "nodeid": str,
    "check": str,
    "test": str,
    "params": dict,
    "status": str,
    "message": str,
    "duration_s": _NUMBER,
    "comparisons": list,
    "info": dict,
}
COMPARISON = {"what": str, "passed": bool, "reason": str, "metrics": dict}

assert SCHEMA_VERSION in SUPPORTED_VERSIONS, "the writer's version must be readable here"


class ResultsError(ValueError):
    """results.json is missing, not JSON, or does not follow the schema."""


def results_path(path: str | Path) -> Path:
    """A run directory (or the reports/latest link) or a results.json file."""
    p = Path(path)
    return p / "results.json" if p.is_dir() else p


def load_results(path: str | Path) -> dict:
    """Parse and validate; raises ResultsError naming the file and the field."""
    p = results_path(path)
    if not p.is_file():
        where = "run directory has no results.json" if p.name == "results.json" and \
            p.parent.is_dir() else "no such file or run directory"
        raise ResultsError(f"{p}: {where}")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ResultsError(f"{p}: not valid JSON: {e.msg} at line {e.lineno} column "
                           f"{e.colno}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{p}: cannot be read: {e}") from None
    validate(doc, str(p))
    return doc


def validate(doc: object, source: str = "results.json") -> None:
    def fail(field: str, msg: str) -> None:
        raise ResultsError(f"{source}: field {field}: {msg}")

    if not isinstance(doc, dict):
        fail("(top level)", f"expected a JSON object, got {type(doc).__name__}")
    if "schema_version" not in doc:
        fail("schema_version", "missing (not a conformance results.json?)")
    version = doc["schema_version"]
    if version not in SUPPORTED_VERSIONS:
        fail("schema_version", f"{version!r} is not supported; this reader knows "
                               f"{', '.join(map(str, SUPPORTED_VERSIONS))}")
    _check_fields(doc, TOP_LEVEL, "", fail)
    if doc["verdict"] not in VERDICTS:
        fail("verdict", f"{doc['verdict']!r} is not one of {VERDICTS}")
    for i, r in enumerate(doc["results"]):
        where = f"results[{i}]"
        if not isinstance(r, dict):
            fail(where, "expected an object")
        _check_fields(r, RESULT, where + ".", fail)
        if r["status"] not in STATUSES:
            fail(f"{where}.status", f"{r['status']!r} is not one of {STATUSES}")
        for j, c in enumerate(r["comparisons"]):
            if not isinstance(c, dict):
                fail(f"{where}.comparisons[{j}]", "expected an object")
            _check_fields(c, COMPARISON, f"{where}.comparisons[{j}].", fail)


def _check_fields(obj: dict, spec: dict, prefix: str, fail) -> None:
    for name, kind in spec.items():
        if name not in obj:
            fail(prefix + name, "missing")
        value = obj[name]
        # bool is an int in Python; a status code or count must not be true/false.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            fail(prefix + name, f"expected {_kind_name(kind)}, got {type(value).__name__} "
                                f"{_short(value)}")


def _kind_name(kind) -> str:
    names = {int: "an integer", str: "a string", dict: "an object", list: "an array",
             bool: "a boolean", _NUMBER: "a number"}
    return names.get(kind, str(kind))


def _short(value: object) -> str:
    s = repr(value)
    return s if len(s) <= 60 else s[:57] + "..."
