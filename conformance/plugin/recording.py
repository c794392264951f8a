"""From pytest items and reports to `CheckRecord`s: the plan at collection, one record per
finished check, and the check's status decided from its recorded comparisons."""

from __future__ import annotations

from typing import Any

import pytest

from ..isolation import CrashedCheck
from ..record import CheckRecord, Comparison, Crash, DefectRef
from ..results import append_part, write_plan
from . import defects
from .verify import UNSUPPORTED_PREFIX, Verify

MESSAGE_LIMIT = 4000
CONFIG: pytest.Config | None = None  # this process's, set by the plugin at configure


def _jsonable(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool, type(None))) else str(v)


def base_record(item: pytest.Item) -> CheckRecord:
    """The identity of a check, typed: what the plan, the report and compare group by."""
    params = dict(item.callspec.params) if hasattr(item, "callspec") else {}
    params = {k: _jsonable(v) for k, v in params.items()}
    module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
    check = module.removeprefix("test_")
    op = None
    test = getattr(item, "originalname", None) or item.name
    if check.startswith("op_"):
        op = str(params.get("op") or _op_named(test) or check.removeprefix("op_"))
    case = params.get("case", params.get("sweep_case", params.get("shape")))
    return CheckRecord(
        nodeid=item.nodeid, check=check, test=test, status="not_run",
        params=params, dtype=_str(params.get("dtype")), model=_str(params.get("model_name")),
        op=op, case=_str(case))


def _op_named(test: str) -> str | None:
    """The op a test function names, the longest that fits: test_op_silu_and_mul_sweep
    checks silu_and_mul (in test_op_silu.py), test_op_rope_batched rope."""
    from infinilm_models.runtime.ops.specs import BY_PY

    name = test.removeprefix("test_op_")
    fits = [op for op in BY_PY if name == op or name.startswith(op + "_")]
    return max(fits, key=len) if fits else None


def reproduce_line(config: pytest.Config, item: pytest.Item) -> str:
    """The full command rerunning `item` as it ran (conformance/reproduce.py)."""
    from ..reproduce import command, context

    ctx = getattr(config, "_infinilm_reproduce", None)
    if ctx is None:
        ctx = config._infinilm_reproduce = context(config)
    r = base_record(item)
    return command(ctx, item.nodeid, r.dtype, r.model)


def bundle_meta(item: pytest.Item) -> dict:
    """What a replay bundle says about its check: node id, op, the command rerunning it."""
    return {"nodeid": item.nodeid, "crashed": False, "op": base_record(item).op,
            "rerun": reproduce_line(item.config, item)}


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def pytest_collection_finish(session: pytest.Session) -> None:
    run_dir = getattr(session.config, "_infinilm_run_dir", None)
    if run_dir is None or session.config.option.collectonly:
        return
    write_plan(run_dir, session.config._infinilm_worker,
               [base_record(i) for i in session.items])


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A file or a parametrization that fails to collect is planned checks that cannot
    run: one `error` record per failed collector, naming it and the error, counted in the
    plan and the verdict (pytest's own 'N errors' line would otherwise be all there is)."""
    if not report.failed:
        return
    run_dir = getattr(CONFIG, "_infinilm_run_dir", None)
    if run_dir is None:
        return
    text = str(report.longrepr)
    last = next((line for line in reversed(text.splitlines())
                 if line.startswith("E ") or "Error" in line), text.splitlines()[-1:] or [""])
    record = CheckRecord(
        nodeid=report.nodeid or "(collection)", check="collection", test=report.nodeid,
        status="error", message=f"collection failed: {str(last).strip()}"[-MESSAGE_LIMIT:],
        setup={"collection_error": text[-MESSAGE_LIMIT:]})
    append_part(run_dir, "collection", record, "plan")
    append_part(run_dir, "collection", record)


def _skip_reason(report: pytest.TestReport) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ")


def decide(report: pytest.TestReport, call: pytest.CallInfo, comparisons: list[Comparison],
           defect: defects.KnownDefect | None) -> tuple[str, str]:
    """(status, message) of a finished check. Comparisons out of bound and not explained
    by a known defect fail it, whatever the test function did after them."""
    if report.skipped:
        reason = _skip_reason(report)
        if reason.startswith(UNSUPPORTED_PREFIX):
            return "unsupported", reason[len(UNSUPPORTED_PREFIX):]
        # Any other skip would hide a check; it is recorded as an error, never as a pass.
        return "error", f"skipped without an 'unsupported' verdict: {reason}"
    against = [c for c in comparisons if c.counts_against]
    if report.failed:
        excinfo = call.excinfo
        message = excinfo.exconly() if excinfo is not None else str(report.longrepr)
        if excinfo is not None and excinfo.errisinstance(CrashedCheck):
            return "crashed", message
        if report.when != "call":
            return "error", f"{report.when}: {message}"
        if against and not any(c.reason in message for c in against):
            message = "; ".join(c.reason for c in against) + f"; then: {message}"
        return "failed", message
    if against:
        return "failed", "; ".join(c.reason for c in against)
    explained = [c for c in comparisons if c.explained_by]
    if explained:
        return "known_defect", "; ".join(c.reason for c in explained)
    if defect is not None and defect.strict == "each":
        return "failed", (f"known defect {defect.id} no longer shows (XPASS, strict): every "
                          "comparison is within its normal bound; remove it from "
                          f"{defect.table} if InfiniCore was fixed")
    return "passed", ""


def settle_crash(record: CheckRecord, defect: defects.KnownDefect | None) -> None:
    """The status of a check whose process died (record.status "crashed", record.crash
    filled): only a crash-kind known defect explains a crash; any other listed defect is
    named in the message as not explaining it. One rule for every way a crash is seen
    (the supervisor's child, an xdist worker, an isolated call inside a check)."""
    if defect is None:
        return
    record.known_defect = DefectRef(**defect.ref())
    if defect.crash:
        record.status = "known_defect"
    else:
        record.message += (f" (known defect {defect.id} is an {defect.kind} defect, so it "
                           "does not explain a crash)")


def apply_to_report(report: pytest.TestReport, status: str, message: str,
                    defect: defects.KnownDefect | None) -> None:
    """Make pytest's own outcome (terminal, JUnit, exit status) say what the record says."""
    if status == "known_defect" and defect is not None:
        report.outcome = "skipped"
        report.wasxfail = f"known defect {defect.id}: {defect.reason}"
    elif status == "failed" and report.passed:
        report.outcome = "failed"
        report.longrepr = message
    elif status == "error" and report.skipped:
        # a bare skip hides a check: an error in the record, so a failure for pytest
        # (terminal, exit status, JUnit), never a skip
        report.outcome = "failed"
        report.longrepr = message


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    done = report.when == "call" or (report.when == "setup" and not report.passed)
    if not done or getattr(item, "_infinilm_recorded", False):
        return
    run_dir = getattr(item.config, "_infinilm_run_dir", None)
    if run_dir is None:
        return
    item._infinilm_recorded = True
    verify: Verify | None = getattr(item, "_infinilm_verify", None)
    defect = verify.defect if verify else defects.defect_for(item.config, item.nodeid,
                                                             base_record(item).model)
    comparisons = verify.comparisons if verify else []
    status, message = decide(report, call, comparisons, defect)
    record = base_record(item)
    record.status = status
    record.message = message[-MESSAGE_LIMIT:]
    if status == "crashed":  # an isolated call inside the check died (isolation.py)
        e = call.excinfo.value
        record.crash = Crash(signal=e.signal, exit_code=e.exit_code, timeout=e.timeout,
                             traceback=record.message)
        settle_crash(record, defect)
        status = record.status
    apply_to_report(report, status, record.message, defect)
    record.duration_s = round(report.duration, 4)
    record.comparisons = comparisons
    if verify is not None:
        record.localization = verify.localization
        record.setup = verify.setup
        record.tensors = verify.tensors
        record.amplification = verify.amplification
        record.generations = verify.generations
        record.measurements = verify.measurements
        record.perf = verify.perf
        record.infini_ops = sorted(verify.ops_called)
        if status in ("failed", "crashed") and verify.trace is not None:
            from ..replay import write_bundle

            record.bundle = write_bundle(run_dir, item, verify, bundle_meta(item))
    if defect is not None and status in ("known_defect", "failed"):
        record.known_defect = DefectRef(**defect.ref())
    append_part(run_dir, item.config._infinilm_worker, record)
