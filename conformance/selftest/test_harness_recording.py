"""The plugin records every outcome with the right status, keeps going after a crash, and
never counts a skip as a pass. Runs an inner pytest session on a small test file."""

from __future__ import annotations

import json

import pytest

from conformance.record import SCHEMA_VERSION

pytest_plugins = ("pytester",)

INNER = '''
import os, signal
import pytest
from conformance.isolation import run_isolated


def _boom():
    os.kill(os.getpid(), signal.SIGSEGV)


def test_crash_in_isolated_child():
    run_isolated(_boom, timeout=60)


def test_known_crash_in_isolated_child():
    run_isolated(_boom, timeout=60)


def test_isolated_crash_under_an_accuracy_defect():
    run_isolated(_boom, timeout=60)


def test_crash_in_the_check_itself():
    os.kill(os.getpid(), signal.SIGSEGV)


def test_known_crash():
    os.kill(os.getpid(), signal.SIGSEGV)


def test_crash_under_an_accuracy_defect():
    os.kill(os.getpid(), signal.SIGSEGV)


def test_after_crash(verify):
    verify.close([1.0, 2.0], [1.0, 2.0], "add", "f32")


def test_unsupported(verify):
    verify.unsupported(RuntimeError("infiniopCreateGemmDescriptor: BAD_TENSOR_DTYPE"))


def test_plain_skip():
    pytest.skip("no reason given")


def test_wrong(verify):
    verify.close([1.0, 2.5], [1.0, 2.0], "add", "f32")


def test_defect_still_there(verify):
    verify.close([1.0, 2.01], [1.0, 2.0], "add", "f32")


def test_defect_and_a_second_one(verify):
    verify.close([1.0, 2.01, 7.0], [1.0, 2.0, 3.0], "add", "f32")


def test_defect_fixed(verify):
    verify.close([1.0, 2.0], [1.0, 2.0], "add", "f32")


def test_finding_only(verify):
    verify.finding("deterministic across calls", False, "calls differ in the last bits")


def test_property(verify):
    verify.rounded([1.0, 2.0], [1.0, 2.0 + 2.0 ** -20], "f32")


@pytest.fixture
def broken():
    raise RuntimeError("fixture exploded")


def test_setup_error(broken):
    pass
'''

DEFECTS = '''
[[defect]]
id = "demo-still-there"
device = "cpu"
kind = "accuracy"
nodeid = ["*test_defect_still_there", "*test_defect_and_a_second_one"]
envelope = { atol = 0.05, rtol = 0.0, nmse = 1.0 }
reason = "demo"
evidence = "demo"

[[defect]]
id = "demo-fixed"
device = "*"
kind = "accuracy"
nodeid = "*test_defect_fixed"
envelope = { atol = 0.05 }
reason = "demo"
evidence = "demo"

[[defect]]
id = "demo-crash"
device = "*"
kind = "crash"
nodeid = ["*test_known_crash", "*test_known_crash_in_isolated_child"]
reason = "demo"
evidence = "demo"

[[defect]]
id = "demo-accuracy"
device = "*"
kind = "accuracy"
nodeid = ["*test_crash_under_an_accuracy_defect",
          "*test_isolated_crash_under_an_accuracy_defect"]
envelope = { atol = 1.0 }
reason = "demo"
evidence = "demo"
'''

EXPECTED = {
    "test_crash_in_isolated_child": "crashed",
    "test_known_crash_in_isolated_child": "known_defect",
    "test_isolated_crash_under_an_accuracy_defect": "crashed",
    "test_crash_in_the_check_itself": "crashed",
    "test_known_crash": "known_defect",
    "test_crash_under_an_accuracy_defect": "crashed",
    "test_after_crash": "passed",
    "test_unsupported": "unsupported",
    "test_plain_skip": "error",
    "test_wrong": "failed",
    "test_defect_still_there": "known_defect",
    "test_defect_and_a_second_one": "failed",
    "test_defect_fixed": "failed",
    "test_finding_only": "passed",
    "test_property": "failed",
    "test_setup_error": "error",
}


def _run(pytester, *args):
    pytester.makepyfile(test_inner=INNER)
    defects = pytester.makefile(".toml", defects=DEFECTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--known-defects={defects}",
        f"--report-dir={pytester.path / 'reports'}", *args)
    doc = json.loads((pytester.path / "reports" / "latest" / "results.json").read_text())
    return result, doc


def _check(result, doc):
    assert result.ret == 1
    status = {r["test"]: r["status"] for r in doc["results"]}
    assert status == EXPECTED
    assert doc["planned"] == len(EXPECTED) and doc["counts"]["not_run"] == 0
    by_test = {r["test"]: r for r in doc["results"]}
    assert "SIGSEGV" in by_test["test_crash_in_isolated_child"]["message"]
    # A crash seen by an isolated call inside the check follows the supervisor's rules.
    assert by_test["test_crash_in_isolated_child"]["crash"]["signal"] == "SIGSEGV"
    assert by_test["test_known_crash_in_isolated_child"]["known_defect"]["id"] == "demo-crash"
    assert "does not explain a crash" in by_test[
        "test_isolated_crash_under_an_accuracy_defect"]["message"]
    crash = by_test["test_crash_in_the_check_itself"]["crash"]
    assert crash["signal"] == "SIGSEGV" and "test_crash_in_the_check_itself" in \
        crash["traceback"]
    assert by_test["test_known_crash"]["known_defect"]["id"] == "demo-crash"
    assert "does not explain a crash" in by_test["test_crash_under_an_accuracy_defect"][
        "message"]
    wrong = by_test["test_wrong"]["comparisons"][0]
    assert wrong["passed"] is False and float(wrong["metrics"]["max_abs"]) == 0.5
    kept = by_test["test_defect_still_there"]["comparisons"][0]
    assert kept["explained_by"] == "demo-still-there" and kept["envelope"]["atol"] == 0.05
    assert "also outside the envelope" in by_test["test_defect_and_a_second_one"]["message"]
    assert "XPASS" in by_test["test_defect_fixed"]["message"]
    finding = by_test["test_finding_only"]["comparisons"][0]
    assert finding["kind"] == "finding" and finding["passed"] is False
    prop = by_test["test_property"]["comparisons"][0]
    assert prop["kind"] == "property" and "not correctly rounded" in prop["reason"]
    assert doc["verdict"] == "fail" and doc["schema_version"] == SCHEMA_VERSION


def test_statuses_are_recorded_serially(pytester):
    _check(*_run(pytester, "-p", "no:xdist"))


def test_statuses_are_recorded_under_xdist(pytester):
    result, doc = _run(pytester, "-n", "2")
    _check(result, doc)
    assert {p.name for p in (pytester.path / "reports" / "latest" / "parts").iterdir()} == \
        {"gw0.jsonl", "gw1.jsonl"}


def test_without_isolation_lost_checks_are_not_run_and_fail_the_run(pytester):
    """--isolate=no under xdist with no restart budget: the worker that segfaults takes
    its remaining checks with it; they are recorded as not_run, never silently lost."""
    pytester.makepyfile(test_inner='''
import os, signal
import pytest

@pytest.mark.parametrize("i", range(6))
def test_many(i, verify):
    if i == 1:
        os.kill(os.getpid(), signal.SIGSEGV)
    verify.close([float(i)], [float(i)], "add", "f32")
''')
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--isolate=no", "-n", "1", "--max-worker-restart=0",
        f"--report-dir={pytester.path / 'reports'}")
    assert result.ret != 0
    doc = json.loads((pytester.path / "reports" / "latest" / "results.json").read_text())
    assert doc["planned"] == 6 and len(doc["results"]) == 6
    assert doc["counts"]["not_run"] >= 1 and doc["verdict"] == "fail"
    not_run = [r for r in doc["results"] if r["status"] == "not_run"]
    assert all(r["not_run_reason"] for r in not_run)
    result.stdout.fnmatch_lines(["*NOT RUN: * of 6 planned checks have no result*"])


def test_a_terminated_run_still_writes_its_record(pytester):
    """SIGTERM in the middle (a CI timeout): the run ends as interrupted, results.json and
    the report are written, and the checks that did not run are not_run."""
    import signal
    import subprocess
    import sys
    import time

    pytester.makepyfile(test_inner='''
import time
import pytest

@pytest.mark.parametrize("i", range(5))
def test_slow(i, verify):
    if i == 2:
        time.sleep(60)
    verify.close([1.0], [1.0], "add", "f32")
''')
    reports = pytester.path / "reports"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                             "-p", "no:xdist", f"--report-dir={reports}"], cwd=pytester.path)
    deadline = time.time() + 60
    while time.time() < deadline and not list(reports.glob("*/parts/*.jsonl")):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    doc = json.loads((reports / "latest" / "results.json").read_text())
    assert doc["planned"] == 5 and len(doc["results"]) == 5
    assert doc["counts"]["not_run"] >= 1 and doc["verdict"] == "fail"
    assert any("interrupted" in (r["not_run_reason"] or "") for r in doc["results"])
    assert (reports / "latest" / "index.html").is_file()


ANY_INNER = '''
import pytest

@pytest.mark.parametrize("case", ["shows", "clean"])
def test_any(case, verify):
    verify.close([1.0, 2.01 if case == "shows" else 2.0], [1.0, 2.0], "add", "f32")
'''

ANY_DEFECT = '''
[[defect]]
id = "demo-any"
device = "*"
kind = "accuracy"
strict = "any"
nodeid = "*test_any*"
envelope = { atol = 0.05, rtol = 0.0, nmse = 1.0 }
reason = "demo"
evidence = "demo"
'''


@pytest.mark.parametrize(("args", "fails"), [
    ([], False),                    # shows in one of its two checks: fine
    (["-k", "clean"], False),       # a narrowed run that misses it proves nothing: a note
])
def test_strict_any_defect(pytester, args, fails):
    pytester.makepyfile(test_inner=ANY_INNER)
    defects = pytester.makefile(".toml", defects=ANY_DEFECT)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:xdist", f"--known-defects={defects}",
        f"--report-dir={pytester.path / 'reports'}", *args)
    doc = json.loads((pytester.path / "reports" / "latest" / "results.json").read_text())
    assert result.ret == 0 and doc["verdict"] == "pass"
    if args:
        assert "showed in none of the 1 checks" in doc["environment"]["notes"][0]
        result.stdout.fnmatch_lines(["note: known defect demo-any*-k 'clean'*"])


def test_strict_any_defect_that_shows_nowhere_fails_a_full_run(pytester):
    pytester.makepyfile(test_inner=ANY_INNER.replace('2.01 if case == "shows" else 2.0',
                                                     "2.0"))
    defects = pytester.makefile(".toml", defects=ANY_DEFECT)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:xdist", f"--known-defects={defects}",
        f"--report-dir={pytester.path / 'reports'}")
    doc = json.loads((pytester.path / "reports" / "latest" / "results.json").read_text())
    assert result.ret == 1 and doc["verdict"] == "fail"
    failed = [r for r in doc["results"] if r["status"] == "failed"]
    assert [r["nodeid"] for r in failed] == ["known_defects.toml::demo-any"]
    assert "XPASS, strict = 'any'" in failed[0]["message"]


def test_a_crash_dump_with_a_second_threads_header_glued_on_names_the_call():
    """Two threads faulting at once can write the second thread's header straight after
    the first one's function name (CI, 2026-12-07: "_computeThread"); the call is still
    the op's C function, not a name made of the two."""
    from conformance.plugin.supervisor import parse_traceback

    dump = ('Fatal Python error: Segmentation fault\n\nThread 0x00007f01 (most recent call '
            'first):\n  File "/x/infinilm_models/runtime/ops/_base.py", line 257 in _compute'
            'Thread 0x00007f02 (most recent call first):\n'
            '  File "/x/infinilm_models/runtime/ops/gemm.py", line 40 in gemm\n')
    assert parse_traceback(dump) == ("gemm", "infiniopGemm (_base.py:257 _compute)")
    plain = dump.replace("_computeThread", "_compute\nThread")
    assert parse_traceback(plain) == ("gemm", "infiniopGemm (_base.py:257 _compute)")
