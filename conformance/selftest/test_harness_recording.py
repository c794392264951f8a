"""The plugin records every outcome with the right status, keeps going after a crash, and
never counts a skip as a pass. Runs an inner pytest session on a small test file."""

from __future__ import annotations

import json

pytest_plugins = ("pytester",)

INNER = '''
import os, signal
import pytest
from conformance.isolation import run_isolated


def _boom():
    os.kill(os.getpid(), signal.SIGSEGV)


def test_crash():
    run_isolated(_boom, timeout=60)


def test_after_crash(verify):
    verify.close([1.0, 2.0], [1.0, 2.0], "add", "f32")


def test_unsupported(verify):
    verify.unsupported(RuntimeError("infiniopCreateGemmDescriptor: BAD_TENSOR_DTYPE"))


def test_plain_skip():
    pytest.skip("no reason given")


def test_wrong(verify):
    verify.close([1.0, 2.5], [1.0, 2.0], "add", "f32")


def test_defect_still_there():
    assert False, "upstream bug"


def test_defect_fixed():
    pass


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
nodeid = "*test_defect_still_there"
reason = "demo"
evidence = "demo"

[[defect]]
id = "demo-fixed"
device = "*"
nodeid = "*test_defect_fixed"
reason = "demo"
evidence = "demo"
'''


def test_statuses_are_recorded(pytester):
    pytester.makepyfile(test_inner=INNER)
    defects = pytester.makefile(".toml", defects=DEFECTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--known-defects={defects}",
        f"--report-dir={pytester.path / 'reports'}")
    assert result.ret == 1
    doc = json.loads((pytester.path / "reports" / "latest" / "results.json").read_text())
    status = {r["test"]: r["status"] for r in doc["results"]}
    assert status == {
        "test_crash": "crashed",
        "test_after_crash": "passed",
        "test_unsupported": "unsupported",
        "test_plain_skip": "error",
        "test_wrong": "failed",
        "test_defect_still_there": "known_defect",
        "test_defect_fixed": "failed",
        "test_setup_error": "error",
    }
    by_test = {r["test"]: r for r in doc["results"]}
    assert "SIGSEGV" in by_test["test_crash"]["message"]
    wrong = by_test["test_wrong"]["comparisons"][0]
    assert wrong["passed"] is False and float(wrong["metrics"]["max_abs"]) == 0.5
    assert by_test["test_defect_still_there"]["known_defect"]["id"] == "demo-still-there"
    assert doc["verdict"] == "fail"
    assert doc["schema_version"] == 1
    assert not list((pytester.path / "reports").glob("*/.results.json.*")), "temp file left"


def test_xdist_workers_share_one_results_file(pytester):
    pytester.makepyfile(test_inner='''
import pytest
@pytest.mark.parametrize("i", range(6))
def test_many(i, verify):
    verify.close([float(i)], [float(i)], "add", "f32")
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2",
                                           f"--report-dir={pytester.path / 'reports'}")
    assert result.ret == 0
    doc = json.loads((pytester.path / "reports" / "latest" / "results.json").read_text())
    assert doc["counts"]["passed"] == 6 and len(doc["results"]) == 6
    assert {p.name for p in (pytester.path / "reports" / "latest" / "parts").iterdir()} == \
        {"gw0.jsonl", "gw1.jsonl"}


def test_a_segfaulting_test_under_xdist_is_recorded_as_crashed(pytester):
    """Without isolation a segfault kills the xdist worker; the controller records the
    check as crashed, restarts the worker and runs the rest."""
    pytester.makepyfile(test_inner='''
import os, signal


def test_a_segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


def test_b_after(verify):
    verify.close([1.0], [1.0], "add", "f32")
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "1",
                                           f"--report-dir={pytester.path / 'reports'}")
    assert result.ret == 1
    doc = json.loads((pytester.path / "reports" / "latest" / "results.json").read_text())
    status = {r["test"]: r["status"] for r in doc["results"]}
    assert status == {"test_a_segfault": "crashed", "test_b_after": "passed"}
