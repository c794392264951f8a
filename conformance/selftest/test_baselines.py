"""`compare RUN --baseline last-green`: the baseline store finds the last green run of the
same suite, device, build and machine; an empty store records a green run and passes; a
red run is never stored as green; newly failing checks and grown errors fail. Records are
built directly (no InfiniCore run), written as results.json, and read back by the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance.record import Bound, CheckRecord, Comparison, RunRecord, summarize, verdict_of
from conformance.report import baselines
from conformance.report.cli import main

CASES = ("a", "b", "c")


def _record(case: str, status: str, nmse: float) -> CheckRecord:
    passed = status == "passed"
    return CheckRecord(
        nodeid=f"conformance/ops/test_op_add.py::test_op_add[f32-{case}]", check="op_add",
        test="test_op_add", status=status, params={"dtype": "f32", "case": case},
        dtype="f32", op="add", case=case, message="" if passed else "out of bound",
        comparisons=[Comparison("output", passed, "output", {"nmse": nmse},
                                Bound("elementwise", "add.f32", atol=1e-6, rtol=1e-6))])


def _write(tmp: Path, run_id: str, statuses: dict[str, str] | None = None,
           nmse: float = 1e-9, build: str = "pypi:0.1.0", machine: str = "m1",
           job: str = "ci") -> Path:
    statuses = statuses or {}
    results = [_record(c, statuses.get(c, "passed"), nmse) for c in CASES]
    run = RunRecord(
        run_id=run_id, verdict=verdict_of(results), counts=summarize(results),
        started_at="2026-12-07T00:00:00+0000", duration_s=1.0, pytest_exit_status=0,
        environment={"infini_device": "cpu", "machine_id": machine, "git_commit": run_id,
                     "infinicore": {"key": build, "label": build},
                     "job": {"name": job, "index": 0, "primary": True,
                             "scoreboard": f"../{job}/index.html"}},
        results=results, planned=len(results))
    folder = tmp / run_id
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(run.to_json())
    return folder


def _gate(run: Path, store: Path, *extra: str) -> int:
    return main(["compare", str(run), "--baseline", "last-green", "--baseline-store",
                 str(store), *extra])


def _last_green(store: Path, **key) -> str | None:
    k = baselines.Key(**{"suite": "ci", "device": "cpu", "build": "pypi:0.1.0",
                         "machine": "m1", **key})
    found = baselines.last_green(store, k)
    return json.loads((found / "meta.json").read_text())["run_id"] if found else None


def test_empty_store_records_a_green_run_and_passes(tmp_path, capsys):
    store = tmp_path / "store"
    assert _gate(_write(tmp_path, "r1"), store) == 0
    out = capsys.readouterr().out
    assert "no baseline yet: run r1 (green) is recorded as the baseline" in out
    assert _last_green(store) == "r1"


def test_one_green_run_is_the_baseline_of_the_next(tmp_path, capsys):
    store = tmp_path / "store"
    assert _gate(_write(tmp_path, "r1"), store) == 0
    assert _gate(_write(tmp_path, "r2"), store) == 0
    out = capsys.readouterr().out
    assert "last green run: r1" in out and "recorded run r2 as the last green run" in out
    assert _last_green(store) == "r2"


def test_a_red_run_is_never_stored_as_green(tmp_path, capsys):
    store = tmp_path / "store"
    # an empty store and a red run: fails, nothing recorded
    assert _gate(_write(tmp_path, "red0", {"a": "failed"}), store) == 1
    assert "is red" in capsys.readouterr().out and _last_green(store) is None
    assert _gate(_write(tmp_path, "r1"), store) == 0
    # newly failing against r1: fails, and r1 stays the last green run
    assert _gate(_write(tmp_path, "red1", {"b": "crashed"}), store) == 1
    out = capsys.readouterr().out
    assert "NEWLY FAILING (1)" in out and _last_green(store) == "r1"
    # the same failure again is still not newly failing against r1: it still fails
    assert _gate(_write(tmp_path, "red2", {"b": "crashed"}), store) == 1
    assert _last_green(store) == "r1"
    with pytest.raises(ValueError, match="never recorded as green"):
        baselines.record_green(store, baselines.Key("ci", "cpu", "pypi:0.1.0", "m1"),
                               RunRecord.load(tmp_path / "red2"), tmp_path / "red2", None)
    history = baselines.read_history(store)
    assert [(h["run_id"], h["green"]) for h in history] == [
        ("red0", False), ("r1", True), ("red1", False), ("red2", False)]


def test_grown_errors_fail_with_fail_on_growth(tmp_path, capsys):
    store = tmp_path / "store"
    assert _gate(_write(tmp_path, "r1", nmse=1e-9), store) == 0
    grown = _write(tmp_path, "r2", nmse=1e-7)  # 100x, every check still passing
    assert _gate(grown, store, "--no-record") == 0
    assert _gate(grown, store, "--fail-on-growth") == 1
    assert "error metric(s) grew by more than 2x" in capsys.readouterr().out
    assert _last_green(store) == "r1"


def test_keys_keep_builds_machines_and_suites_apart(tmp_path):
    store = tmp_path / "store"
    assert _gate(_write(tmp_path, "r1"), store) == 0
    assert _gate(_write(tmp_path, "up1", build="git:2cec6ce6b27a789bf47818b370defa47a2"),
                 store) == 0
    assert _gate(_write(tmp_path, "other-machine", machine="m2"), store) == 0
    assert _gate(_write(tmp_path, "bench-suite", job="bench"), store) == 0
    assert _last_green(store) == "r1"
    assert _last_green(store, build="git:2cec6ce6b27a789bf47818b370defa47a2") == "up1"
    assert _last_green(store, machine="m2") == "other-machine"
    assert _last_green(store, suite="bench") == "bench-suite"


def test_a_job_folder_is_compared_run_by_run(tmp_path, capsys):
    reports, store = tmp_path / "reports", tmp_path / "store"
    a = _write(reports, "r-0.1.0")
    b = _write(reports, "r-up", build="git:2cec6ce6b27a789bf47818b370defa47a2",
               statuses={"c": "error"})
    (reports / "ci").mkdir()
    (reports / "ci" / "job.json").write_text(json.dumps({"name": "ci",
                                                          "runs": [a.name, b.name]}))
    assert _gate(reports / "ci", store) == 1  # the upstream run is red
    out = capsys.readouterr().out
    assert f"== {a.name}" in out and f"== {b.name}" in out
    assert _last_green(store) == "r-0.1.0"


def test_compare_needs_one_baseline(tmp_path, capsys):
    run = _write(tmp_path, "r1")
    assert main(["compare", str(run)]) == 2
    assert "no baseline" in capsys.readouterr().err
    assert main(["compare", str(run), str(run), "--baseline", "last-green"]) == 2
