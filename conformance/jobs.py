"""A job: the runs one CI step makes, published as one artifact.

`tox -e cpu` runs the suite on InfiniCore 0.1.0 and then (where configured) on upstream:
two pytest runs, two run directories. With $INFINILM_JOB set (tox sets it to the
environment's name), every run registers itself in `reports/<job>/job.json`:

* the first run of the job is its primary run: `reports/latest` points at it, and a later
  run of the same job leaves `latest` alone (it used to point at whichever ran last);
* after each run, `reports/<job>/index.html` is the merged scoreboard of the job's runs so
  far (`infinilm-conformance merge`), and each run's report links it.

`python -m conformance.ci job-start NAME` (tox's commands_pre) begins a job afresh in
reports/. A run whose report root has no such job (a self-test's inner run under tox, a
run with its own --report-dir) is not part of it: its `latest` is its newest run.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

from .results import atomic_write_text

JOB_ENV = "INFINILM_JOB"
JOB_FILE = "job.json"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
RESERVED = frozenset({"latest", "benchmarks"})


def job_name(value: str | None = None) -> str | None:
    """The job of this process ($INFINILM_JOB, or `value`), validated; None for none."""
    name = (os.environ.get(JOB_ENV, "") if value is None else value).strip()
    if not name:
        return None
    if not _NAME.fullmatch(name) or name in RESERVED:
        raise ValueError(f"{JOB_ENV}={name!r}: a job name is a letter followed by letters, "
                         "digits, '.', '_' or '-' (at most 64), not 'latest' or 'benchmarks': "
                         "it names the folder reports/<job>/")
    return name


def job_dir(report_root: Path, name: str) -> Path:
    return Path(report_root) / name


@contextmanager
def _locked(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(folder: Path) -> dict | None:
    try:
        doc = json.loads((folder / JOB_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("runs"), list) else None


def start(report_root: Path, name: str) -> Path:
    """Begin job `name` afresh: an empty run list and no scoreboard."""
    name = job_name(name)
    folder = job_dir(report_root, name)
    with _locked(folder):
        for stale in ("index.html", "scoreboard.json"):
            (folder / stale).unlink(missing_ok=True)
        atomic_write_text(folder / JOB_FILE, json.dumps(
            {"name": name, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": []},
            indent=1) + "\n")
    return folder


def register(report_root: Path, name: str, run_id: str) -> dict | None:
    """Add `run_id` to job `name`, if that job was started in this report root (else
    None: a run elsewhere, e.g. a self-test's inner run, is not part of the job); returns
    what the run records as `environment.job`: the job's name, the run's place in it (0:
    the primary run), and the scoreboard's address relative to the run directory."""
    folder = job_dir(report_root, name)
    if not (folder / JOB_FILE).is_file():
        return None
    with _locked(folder):
        doc = _read(folder)
        if doc is None:
            return None
        if run_id not in doc["runs"]:
            doc["runs"].append(run_id)
        atomic_write_text(folder / JOB_FILE, json.dumps(doc, indent=1) + "\n")
    index = doc["runs"].index(run_id)
    return {"name": name, "index": index, "primary": index == 0,
            "scoreboard": f"../{name}/index.html"}


def runs(report_root: Path, name: str) -> list[Path]:
    """The job's run directories that hold a results.json, in the order they ran."""
    doc = _read(job_dir(report_root, name)) or {"runs": []}
    out = [Path(report_root) / r for r in doc["runs"]]
    return [p for p in out if (p / "results.json").is_file()]


def is_job_dir(path: Path) -> bool:
    return (Path(path) / JOB_FILE).is_file()


def write_scoreboard(report_root: Path, name: str) -> Path | None:
    """reports/<job>/index.html: the merged scoreboard of the job's runs so far."""
    found = runs(report_root, name)
    if not found:
        return None
    from .report.merge import merge_runs

    return merge_runs([str(p) for p in found], job_dir(report_root, name))
