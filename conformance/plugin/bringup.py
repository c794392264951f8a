"""Bring-up tools in the run: the stage of every check (markers, --stages), the support
probe (--support), the tensors of failing model checks (--dump-tensors), infiniop-test
case files of op checks (--infiniop-cases) and the reproduce command of every check.

The modules doing the work are conformance/stages.py, support.py, dump.py, gguf_cases.py
and reproduce.py; this one only hooks them into pytest.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest

from .. import stages
from ..record import RunRecord

# -- stages ---------------------------------------------------------------------------------


def pytest_itemcollected(item: pytest.Item) -> None:
    """Every check gets its stage's marker before -m selects (no test file declares one)."""
    stage = stages.stage_of(item.nodeid)
    if stage is not None:
        item.add_marker(getattr(pytest.mark, stage))


def configure(config: pytest.Config) -> None:
    """Every process: --support draws no input values (ops/common.py). The controller:
    usage errors of the bring-up options, before any check runs."""
    if config.getoption("--support"):
        from ..ops import common

        common.SHAPES_ONLY = True
    if getattr(config, "workerinput", None) is None:
        check_options(config)


def check_options(config: pytest.Config) -> None:
    if config.getoption("--stages") and getattr(config.option, "dist", "no") != "no":
        raise pytest.UsageError(
            "--stages runs the stages one after the other, which xdist's workers cannot: "
            "run it without -n (or with -n 0)")
    target = config.getoption("--dump-tensors")
    if target is not None:
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise pytest.UsageError(f"--dump-tensors {target}: cannot create it: "
                                    f"{e.strerror or e}") from None


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.getoption("--stages"):
        gate = session.config._infinilm_stages = stages.Gate()
        gate.plan([i.nodeid for i in session.items])
        session.config._infinilm_session = session


def _failing(report: pytest.TestReport) -> bool:
    if report.failed:
        return True
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        return not str(reason).removeprefix("Skipped: ").startswith("unsupported: ")
    return False


# trylast: after pytest's own, which sets shouldfail when -x/--maxfail is reached
@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A check is finished at its call report, or at a setup that did not pass."""
    from .recording import CONFIG

    gate = getattr(CONFIG, "_infinilm_stages", None)
    if gate is None or not (report.when == "call" or
                            (report.when == "setup" and not report.passed)):
        return
    gate.finished(report.nodeid, _failing(report), str(report.longrepr or ""))
    session = getattr(CONFIG, "_infinilm_session", None)
    if session is not None and session.shouldfail and gate.stopped is None:
        gate.stopped = stages.stage_of(report.nodeid) or "other"  # -x: the stage it is in
        session.shouldfail = (f"{session.shouldfail}, in stage '{gate.stopped}' at "
                              f"{report.nodeid} (--stages)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    yield
    gate = getattr(item.config, "_infinilm_stages", None)
    if gate is not None:
        reason = gate.stop_reason(item.nodeid, nextitem.nodeid if nextitem else None)
        if reason:
            # shouldfail (as -x does): the run ends as failed, and every check left is
            # recorded not_run with "the run stopped early (<reason>)"
            item.session.shouldfail = reason


# -- per check: the support probe, tensor dumps, case files -------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    verify = getattr(item, "_infinilm_verify", None)
    if not item.config.getoption("--support"):
        if verify is not None and verify.trace is not None:
            from .recording import bundle_meta

            verify.trace.meta = bundle_meta(item)  # a crash re-run's bundle says it too
        yield
        return
    from infinilm_models.runtime.ops import describe_only

    from ..support import Probe

    if verify is not None and verify.trace is not None:
        verify.trace.stop()  # nothing to replay: no buffer is copied
    probe = item._infinilm_probe = Probe()
    with describe_only(probe.observe):
        yield


# trylast: inside recording's wrapper, so the report it reads is already the probe's
@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when != "call":
        return
    config = item.config
    verify = getattr(item, "_infinilm_verify", None)
    probe = getattr(item, "_infinilm_probe", None)
    if probe is not None:  # (no known defect applies under --support: defects.active)
        _support_verdict(item, report, verify, probe)
        return
    target = config.getoption("--dump-tensors")
    cases = config.getoption("--infiniop-cases") == "all"
    if verify is None or (target is None and not cases):
        return
    from .recording import base_record, decide, reproduce_line

    # the status recording will give it (the same decision, made here as well)
    status, message = decide(report, call, verify.comparisons, verify.defect)
    if target is not None and status == "failed" and "/model/" in item.nodeid:
        from ..dump import dump

        dump(target, item.nodeid, message, reproduce_line(config, item), verify.captures)
    verify.captures.clear()
    if cases and verify.trace is not None and status not in ("failed", "crashed"):
        from ..replay import write_case

        write_case(config._infinilm_run_dir / "infiniop-test", item, verify,
                   base_record(item).op)


def _support_verdict(item, report, verify, probe) -> None:
    """The probe's status replaces the check's: outputs were never written, so its
    comparisons mean nothing (they are dropped); a refusal is unsupported."""
    from ..support import append_rows, verdict

    rows = probe.take()
    append_rows(item.config._infinilm_run_dir, item.config._infinilm_worker, rows)
    if verify is not None:
        verify.comparisons.clear()
        verify.expected.clear()
    if not rows:
        # no InfiniCore call: a check refused or failing before its first one keeps its
        # own outcome; one that calls none (nothing to probe) passes
        return
    status, message = verdict(rows)
    if status == "unsupported":
        from .verify import UNSUPPORTED_PREFIX

        report.outcome = "skipped"
        report.longrepr = (str(item.path), 0, f"Skipped: {UNSUPPORTED_PREFIX}{message}")
    else:
        report.outcome, report.longrepr = "passed", None


# -- the end of the run (controller) ------------------------------------------------------


def finish_run(config: pytest.Config, run: RunRecord) -> None:
    """What the bring-up tools add to the run's record before it is written (session.py):
    the reproduce context, the support matrix and its Markdown table, the stages."""
    from ..reproduce import context

    run.environment["reproduce"] = context(config)
    gate = getattr(config, "_infinilm_stages", None)
    if gate is not None:
        run.environment.setdefault("notes", []).append(
            "stages (--stages): " + "; ".join(line.strip() for line in gate.lines()))
    if not config.getoption("--support"):
        return
    from infinilm_models.runtime.capabilities import current_build

    from ..support import markdown, matrix, probe_model, read_rows
    from .options import dtypes

    rows = read_rows(config._infinilm_run_dir)
    models = [m for m in (config.getoption("--model") or "").split(",") if m.strip()]
    device = config.getoption("--infini-device")
    for model in models:
        rows += probe_model(model.strip(), device, dtypes(config))
    exported = (run.environment.get("infinicore") or {}).get("exported_ops")
    if not isinstance(exported, list):
        exported = sorted(current_build().ops)
    run.support = matrix(rows, run.results, exported, dtypes(config),
                         time.time() - config._infinilm_started, models)
    when = time.strftime("%Y-%m-%d")
    text = markdown(run.support, run.build_label, device,
                    shlex.join(["pytest", *config.invocation_params.args]), when)
    from ..results import atomic_write_text

    atomic_write_text(Path(config._infinilm_run_dir) / "support.md", text)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    run: RunRecord | None = getattr(config, "_infinilm_run", None)
    if run is None:
        return
    tr = terminalreporter
    gate = getattr(config, "_infinilm_stages", None)
    if gate is not None:
        tr.write_line("stages, in order (--stages):")
        for line in gate.lines():
            tr.write_line(line, red="FAILED" in line)
    if run.support is not None:
        from ..support import console_lines

        for line in console_lines(run.support):
            tr.write_line(line)
        tr.write_line(f"support table (Markdown): {config._infinilm_run_dir / 'support.md'}")
    target = config.getoption("--dump-tensors")
    if target is not None:
        dumped = sorted(p.parent.name for p in Path(target).glob("*/index.json"))
        tr.write_line(f"tensors of failing model checks: {target} ({len(dumped)} check(s))")
