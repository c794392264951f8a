"""junit.xml agrees with results.json, status by status: a CI system reading JUnit sees the
run's verdict. One inner run produces every status; the test reads both files of that run
and checks each record against its testcase."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from conformance.record import STATUSES

pytest_plugins = ("pytester",)

# In file order. --maxfail=5 stops the run after test_setup_error (plain skip, wrong,
# crash, defect_fixed and setup_error fail), so test_never is planned and not run.
INNER = '''
import os, signal
import pytest


def test_pass(verify):
    verify.close([1.0, 2.0], [1.0, 2.0], "add", "f32")


def test_unsupported(verify):
    verify.unsupported(RuntimeError("infiniopCreateGemmDescriptor: BAD_TENSOR_DTYPE"))


def test_known(verify):
    verify.close([1.0, 2.01], [1.0, 2.0], "add", "f32")


def test_any_clean(verify):
    verify.close([1.0, 2.0], [1.0, 2.0], "add", "f32")


def test_plain_skip():
    pytest.skip("no reason given")


def test_wrong(verify):
    verify.close([1.0, 2.5], [1.0, 2.0], "add", "f32")


def test_crash():
    os.kill(os.getpid(), signal.SIGSEGV)


def test_defect_fixed(verify):
    verify.close([1.0, 2.0], [1.0, 2.0], "add", "f32")


@pytest.fixture
def broken():
    raise RuntimeError("fixture exploded")


def test_setup_error(broken):
    pass


def test_never(verify):
    verify.close([1.0], [1.0], "add", "f32")
'''

DEFECTS = '''
[[defect]]
id = "demo-known"
device = "*"
kind = "accuracy"
nodeid = "*test_known"
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
id = "demo-any"
device = "*"
kind = "accuracy"
strict = "any"
nodeid = "*test_any_clean"
envelope = { atol = 0.05 }
reason = "demo"
evidence = "demo"
'''

# What a CI system must see for each recorded status (the JUnit element of the testcase).
EXPECTED_ELEMENT = {"passed": None, "failed": "failure", "crashed": "failure",
                    "error": "error", "not_run": "error", "known_defect": "skipped",
                    "unsupported": "skipped"}


def _address(nodeid: str) -> tuple[str, str]:
    """pytest's JUnit naming: the file as a dotted module path, the test name with its
    parameters."""
    path, _, name = nodeid.rpartition("::")
    return path.removesuffix(".py").replace("/", "."), name


def test_junit_says_what_results_json_says(pytester):
    pytester.makepyfile(test_inner=INNER)
    defects = pytester.makefile(".toml", defects=DEFECTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:xdist", "--maxfail=5",
        f"--known-defects={defects}", f"--report-dir={pytester.path / 'reports'}")
    run = pytester.path / "reports" / "latest"
    doc = json.loads((run / "results.json").read_text())
    assert result.ret == 1 and doc["verdict"] == "fail"
    status = {r["nodeid"]: r["status"] for r in doc["results"]}
    assert status["test_inner.py::test_plain_skip"] == "error"
    assert status["test_inner.py::test_never"] == "not_run"
    assert status["test_inner.py::test_defect_fixed"] == "failed"  # strict XPASS
    assert status["known_defects.toml::demo-any"] == "failed"      # strict "any" XPASS
    assert set(status.values()) == set(STATUSES), "every status appears in this run"

    suite = ET.parse(run / "junit.xml").getroot().find("testsuite")
    cases = {(c.get("classname"), c.get("name")): c for c in suite.iter("testcase")}
    assert len(cases) == len(doc["results"]), "one testcase per record, no more"
    for r in doc["results"]:
        case = cases.get(_address(r["nodeid"]))
        assert case is not None, f"no testcase for {r['nodeid']} ({r['status']})"
        outcomes = [c for c in case if c.tag in ("failure", "error", "skipped")]
        want = EXPECTED_ELEMENT[r["status"]]
        assert [c.tag for c in outcomes] == ([want] if want else []), \
            f"{r['nodeid']}: {r['status']} in results.json, {[c.tag for c in outcomes]} in JUnit"
        if want:
            message = outcomes[0].get("message", "")
            if r["status"] == "known_defect":
                assert r["known_defect"]["id"] in message
            elif r["status"] == "not_run":
                assert message.startswith("not run:") and r["not_run_reason"] in message
            else:
                assert r["message"][:100] in message, (r["nodeid"], message)
    counts = doc["counts"]
    assert int(suite.get("tests")) == len(doc["results"])
    assert int(suite.get("failures")) == counts["failed"] + counts["crashed"]
    assert int(suite.get("errors")) == counts["error"] + counts["not_run"]
    assert int(suite.get("skipped")) == counts["known_defect"] + counts["unsupported"]
    # pytest's own outcome says it too: the bare skip is a failure, not a skip
    result.stdout.fnmatch_lines(["*FAILED test_inner.py::test_plain_skip*"])
