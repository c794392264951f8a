"""JUnit XML that says what results.json says.

pytest's junitxml plugin writes junit.xml from pytest's own outcomes, which cannot say
everything the record says: a planned check that never ran has no pytest report at all,
and a strict "any" known defect that no longer shows is a record of the run, not of a
test. So at the end of the run (after junitxml has written the file) every record is
settled into it, status by status, and the record wins:

=============  =========================================================
status         testcase
=============  =========================================================
passed         no failure, error or skipped element
failed         <failure message="the record's message">
crashed        <failure type="crashed" ...> (signal, op, last call)
error          <error message=...>
not_run        <error type="not_run" message="not run: <reason>">
known_defect   <skipped type="known_defect" message="known defect <id>: ...">
unsupported    <skipped type="unsupported" message=...>
=============  =========================================================

A record without a testcase (not run, a strict "any" XPASS, a failed collection) gets one;
the suite's counts are recomputed. CI systems reading junit.xml therefore see the run's
verdict: a job that is red in results.json is red in JUnit.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from .record import CheckRecord, RunRecord
from .results import atomic_write_text

ELEMENT = {"passed": None, "failed": "failure", "crashed": "failure", "error": "error",
           "not_run": "error", "known_defect": "skipped", "unsupported": "skipped"}
OUTCOMES = ("failure", "error", "skipped")
MESSAGE_LIMIT = 2000
# Characters XML 1.0 cannot hold, even escaped.
_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(text: str, limit: int | None = MESSAGE_LIMIT) -> str:
    text = _INVALID.sub("?", text)
    return text if limit is None else text[:limit]


def testcase_address(nodeid: str, prefix: str | None = None) -> tuple[str, str]:
    """(classname, name) pytest's junitxml gives the test with this node id."""
    from _pytest.junitxml import mangle_test_address

    names = mangle_test_address(nodeid)
    classname = ".".join(names[:-1])
    if prefix:
        classname = f"{prefix}.{classname}"
    return classname, names[-1]


def message_of(record: CheckRecord) -> str:
    """The text a CI system shows for the check: its status and the record's message,
    with the known defect's id where one applies."""
    if record.status == "not_run":
        return f"not run: {record.not_run_reason or record.message or 'no result recorded'}"
    if record.status == "known_defect" and record.known_defect is not None:
        return f"known defect {record.known_defect.id}: {record.message}"
    if record.status == "passed":
        return ""
    return f"{record.status}: {record.message}" if record.message else record.status


def _settle(case: ET.Element, record: CheckRecord) -> bool:
    """Make one testcase say the record's status; True if it changed."""
    want = ELEMENT[record.status]
    present = [c for c in case if c.tag in OUTCOMES]
    message = _clean(message_of(record))
    kind = record.status if record.status in ("crashed", "not_run", "known_defect",
                                              "unsupported") else None
    if want is None:
        for c in present:
            case.remove(c)
        return bool(present)
    keep = [c for c in present if c.tag == want]
    changed = len(keep) != len(present) or not keep
    for c in present:
        if c.tag != want:
            case.remove(c)
    if keep:
        element = keep[0]
        for extra in keep[1:]:  # a failing call and a failing teardown: one verdict
            case.remove(extra)
            changed = True
    else:
        element = ET.SubElement(case, want)
        body = record.crash.traceback if record.crash is not None and record.crash.traceback \
            else record.message
        element.text = _clean(body, None)
    if element.get("message") != message:
        element.set("message", message)
        changed = True
    if kind is not None and element.get("type") != kind:
        element.set("type", kind)
        changed = True
    return changed


def _suite(root: ET.Element) -> ET.Element:
    if root.tag == "testsuite":
        return root
    suite = root.find("testsuite")
    if suite is None:
        suite = ET.SubElement(root, "testsuite", name="pytest")
    return suite


def reconcile(path: str | Path, run: RunRecord, prefix: str | None = None) -> int:
    """Settle every record of `run` into the JUnit file at `path` (rewritten atomically);
    returns how many testcases were changed or added."""
    path = Path(path)
    tree = ET.parse(path)
    root = tree.getroot()
    suite = _suite(root)
    index: dict[tuple[str, str], list[ET.Element]] = {}
    for case in suite.iter("testcase"):
        index.setdefault((case.get("classname", ""), case.get("name", "")), []).append(case)
    changed = 0
    for record in run.results:
        address = testcase_address(record.nodeid, prefix)
        cases = index.get(address)
        if not cases:
            case = ET.SubElement(suite, "testcase", classname=address[0], name=address[1],
                                 time=f"{record.duration_s:.3f}")
            cases = index[address] = [case]
            changed += 1
            _settle(case, record)
            continue
        changed += sum(_settle(case, record) for case in cases)
    cases = list(suite.iter("testcase"))
    for attr, tag in (("failures", "failure"), ("errors", "error"), ("skipped", "skipped")):
        suite.set(attr, str(sum(1 for c in cases if c.find(tag) is not None)))
    suite.set("tests", str(len(cases)))
    text = ET.tostring(root, encoding="unicode")
    atomic_write_text(path, '<?xml version="1.0" encoding="utf-8"?>' + text)
    return changed
