"""The end of a run (controller only): every planned check gets a status, strict-any
defects are settled, results.json and the HTML report are written, the summary and the
exit status say how many checks did not run."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from .. import policy
from ..coverage import coverage_of, summary_lines
from ..judge import TolerancePolicy
from ..record import (
    STATUSES,
    CheckRecord,
    DefectRef,
    RunRecord,
    duration_table,
    summarize,
    verdict_of,
)
from ..results import assemble, point_latest, write_results
from . import bringup, defects, threads
from .options import dtypes

SUMMARY_LINES = 40


def not_run_reason(session: pytest.Session, exitstatus: int) -> str:
    config = session.config
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        return "the run was interrupted before this check"
    if session.shouldfail or session.shouldstop:
        return f"the run stopped early ({session.shouldfail or session.shouldstop})"
    lost = getattr(config, "_infinilm_lost_workers", [])
    if lost:
        return (f"xdist worker(s) {', '.join(sorted(set(lost)))} died and were not replaced "
                "(the restart budget ran out); run with --isolate=yes")
    return "no result was recorded: the process running it died or the run stopped early"


def narrowed(config: pytest.Config) -> list[str]:
    """How this run's selection is narrower than its files' default plan (-k, -m, --model,
    node ids, --deselect, --last-failed); empty when it is not."""
    opt = config.option
    how = []
    if getattr(opt, "keyword", ""):
        how.append(f"-k {opt.keyword!r}")
    if getattr(opt, "markexpr", ""):
        how.append(f"-m {opt.markexpr!r}")
    if config.getoption("--model"):
        how.append(f"--model {config.getoption('--model')}")
    if any("::" in str(a) for a in config.args):
        how.append("node ids")
    if getattr(opt, "deselect", None):
        how.append("--deselect")
    if getattr(opt, "lf", False):
        how.append("--last-failed")
    return how


def settle_strict_any(run: RunRecord, config: pytest.Config) -> list[CheckRecord]:
    """A `strict = "any"` defect must show in at least one of its checks that ran. Which of
    its checks show it depends on the case (a model, a size), so a narrowed run that
    misses every one of those proves nothing: there it is a note in the environment, not
    a failure (a correct backend must not fail a subset run)."""
    extra = []
    how = narrowed(config)
    for d in defects.active(config):
        if not d.vouched:
            ran = [r for r in run.results if d.matches(r.nodeid, r.model)
                   and r.status not in ("not_run", "unsupported")]
            if ran and not any(r.status == "known_defect" for r in ran):
                run.environment.setdefault("notes", []).append(
                    f"known defect {d.id} (observed on {', '.join(d.builds)}) did not show in "
                    f"any of the {len(ran)} checks it covers on this build, which the table "
                    "has not seen: fixed here, or not reached")
            continue
        if d.strict != "any":
            continue
        ran = [r for r in run.results if d.matches(r.nodeid, r.model)
               and r.status not in ("not_run", "unsupported")]
        if ran and not any(r.status == "known_defect" for r in ran) and how:
            run.environment.setdefault("notes", []).append(
                f"known defect {d.id} (strict = 'any') showed in none of the {len(ran)} "
                f"checks it covers that this narrowed run ({', '.join(how)}) ran; the full "
                "run decides whether it is fixed")
        elif ran and not any(r.status == "known_defect" for r in ran):
            extra.append(CheckRecord(
                nodeid=f"known_defects.toml::{d.id}", check="known_defects", test=d.id,
                status="failed", known_defect=DefectRef(**d.ref()),
                message=f"known defect {d.id} no longer shows in any of the {len(ran)} checks "
                        f"it covers that ran (XPASS, strict = 'any'); remove it from "
                        f"{d.table} if InfiniCore was fixed"))
    return extra


def model_identities(run: RunRecord) -> dict[str, dict]:
    """model name -> its directory and content digest, for every model the run checked:
    `compare` matches checks by the digest, so two runs of one checkpoint under different
    paths still line up."""
    from ..model.harness import resolve_model
    from ..model.reference import checkpoint_digest

    out = {}
    for name in sorted({r.model for r in run.results if r.model}):
        try:
            path = resolve_model(name)
            out[name] = {"path": str(path), "digest": checkpoint_digest(path)}
        except Exception as e:  # noqa: BLE001 - a broken checkpoint is its checks' error
            out[name] = {"error": str(e)[:300]}
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if getattr(config, "workerinput", None) is not None or \
            not hasattr(config, "_infinilm_run_id"):
        return
    tol = TolerancePolicy.load(config.getoption("--tolerances"))
    run_dir: Path = config._infinilm_run_dir
    junit = Path(os.path.abspath(config.option.xmlpath)) if getattr(
        config.option, "xmlpath", None) else None
    if junit is not None and junit.parent == run_dir:
        junit = Path(junit.name)
    run = assemble(run_dir, config._infinilm_run_id, config.getoption("--infini-device"),
                   config._infinilm_started, int(exitstatus),
                   not_run_reason(session, int(exitstatus)),
                   {"dtypes": dtypes(config), "tolerance_sources": tol.sources,
                    "tolerances": tol.table, "junit_xml": str(junit) if junit else None})
    extra = settle_strict_any(run, config)
    if extra:
        run.results = sorted(run.results + extra, key=lambda r: r.nodeid)
        run.counts, run.verdict = summarize(run.results), verdict_of(run.results)
    run.coverage = coverage_of(run)
    bringup.finish_run(config, run)  # reproduce context, --support matrix, --stages
    run.durations = duration_table(run.results)
    run.environment["known_defects_scope"] = defects.scope_note(config)
    run.environment["policy"] = policy.describe(
        config.getoption("--tolerances"), [t.describe() for t in defects.in_force(config)])
    run.environment["threads"] = threads.describe(config)
    from ..model.reference import cache_dir
    from ..placement import describe as placement

    # Where ours, the reference and the golden ran, and the torch device probe's outcome.
    run.environment["placement"] = where = placement(config.getoption("--infini-device"),
                                                     dtypes(config))
    run.environment["golden"] = where["golden"] + (
        " (checked against float64 on the CPU by test_model_golden)"
        if not where["golden"].endswith(" on cpu") else "")
    folder = cache_dir()
    run.environment["reference_cache"] = str(folder) if folder else "off"
    run.environment["models"] = model_identities(run)
    if getattr(config, "_infinilm_auto_workers", None):
        run.environment["auto_workers"] = config._infinilm_auto_workers
    job = getattr(config, "_infinilm_job", None)
    if job:
        run.environment["job"] = job
    config._infinilm_run = run
    config._infinilm_results_path = write_results(run_dir, run)
    if run.verdict == "fail" and session.exitstatus == pytest.ExitCode.OK:
        # Checks that did not run, or a known defect that no longer shows anywhere: pytest
        # saw nothing fail, the record did.
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    _render_report(session, run_dir)
    # reports/latest is the newest run, or, in a job, the job's primary (first) run.
    if not job or job["primary"]:
        point_latest(config._infinilm_report_root, run_dir)
    if job:
        _job_scoreboard(config, job["name"])


def _job_scoreboard(config: pytest.Config, name: str) -> None:
    """reports/<job>/index.html over the job's runs so far. A failure is printed, never
    fatal: each run's own record and report are already written."""
    from .. import jobs

    try:
        config._infinilm_job_board = jobs.write_scoreboard(config._infinilm_report_root, name)
    except Exception as e:  # noqa: BLE001 - reported on the terminal
        config._infinilm_job_board_error = f"{type(e).__name__}: {e}"


def pytest_unconfigure(config: pytest.Config) -> None:
    """junit.xml (written by pytest's junitxml at the end of the session, after the
    record) settled to say what results.json says (conformance/junit.py)."""
    run: RunRecord | None = getattr(config, "_infinilm_run", None)
    xmlpath = getattr(config.option, "xmlpath", None)
    if run is None or not xmlpath or not Path(xmlpath).is_file():
        return
    from ..junit import reconcile

    try:
        reconcile(xmlpath, run, getattr(config.option, "junitprefix", None))
    except Exception as e:  # noqa: BLE001 - the run's record stands; say so loudly
        sys.stderr.write(f"infinilm conformance: settling {xmlpath} with results.json "
                         f"failed: {type(e).__name__}: {e}\n")


def _render_report(session: pytest.Session, run_dir: Path) -> None:
    """index.html from the results.json just written, whatever the tests' outcome.

    A rendering failure must not hide the results (results.json and junit.xml are already
    written) but must not pass unnoticed either: a CI job publishing the report would
    publish nothing. So the traceback is printed and an otherwise green session exits
    with INTERNAL_ERROR (3); a red one keeps its own non-zero status."""
    config = session.config
    started = time.perf_counter()
    try:
        from ..report.render import render_run

        config._infinilm_report_path = render_run(run_dir)
        config._infinilm_report_seconds = time.perf_counter() - started
    except Exception as e:  # noqa: BLE001 - reported loudly below, never swallowed
        import traceback

        config._infinilm_report_error = f"{type(e).__name__}: {e}"
        sys.stderr.write("infinilm conformance: rendering the HTML report failed:\n"
                         + traceback.format_exc())
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    run: RunRecord | None = getattr(config, "_infinilm_run", None)
    if run is None:
        return
    tr = terminalreporter
    tr.section("infinilm conformance")
    counts = run.counts
    banner = f"verdict: {policy.verdict_text(run.verdict, run.environment)}   " \
             f"{len(run.results)} of {run.planned} planned " \
             "checks recorded   " + "  ".join(f"{s}={counts.get(s, 0)}" for s in STATUSES)
    loosened = bool((run.environment.get("policy") or {}).get("loosened"))
    tr.write_line(banner, red=run.verdict == "fail", green=run.verdict == "pass" and not loosened,
                  yellow=run.verdict == "pass" and loosened, bold=True)
    keys = (run.environment.get("infinicore") or {}).get("keys") or []
    tr.write_line(f"InfiniCore: {run.build_label}" + (
        f"; a known-defects table names it by any of: {', '.join(keys)}" if keys else ""))
    if run.environment.get("auto_workers"):
        tr.write_line(run.environment["auto_workers"])
    tr.write_line(run.environment.get("known_defects_scope", ""))
    for line in policy.lines(run.environment.get("policy")):
        tr.write_line(line, yellow=loosened and line.startswith("tolerances"))
    if run.not_run:
        tr.write_line(f"NOT RUN: {run.not_run} of {run.planned} planned checks have no result "
                      f"({next(r.not_run_reason for r in run.results if r.status == 'not_run')})"
                      "; the run is not green", red=True, bold=True)
    by_check: dict[str, dict[str, int]] = {}
    for r in run.results:
        row = by_check.setdefault(r.check, {s: 0 for s in STATUSES})
        row[r.status] += 1
    width = max([len(c) for c in by_check] + [5])
    tr.write_line(f"{'check':<{width}}  " + "  ".join(f"{s:>12}" for s in STATUSES))
    for name in sorted(by_check):
        tr.write_line(f"{name:<{width}}  " + "  ".join(f"{by_check[name][s]:>12}"
                                                      for s in STATUSES))
    if run.coverage is not None:
        for line in summary_lines(run.coverage, verbose=config.option.verbose > 0):
            tr.write_line(line)
    for note in run.environment.get("notes", []):
        tr.write_line(f"note: {note}", yellow=True)
    lines = [f"{r.status}: {r.nodeid}: {r.message[:200]}" for r in run.results
             if r.status in ("unsupported", "known_defect", "crashed", "not_run")]
    lines += [f"finding: {r.nodeid}: {f.reason[:200]}" for r in run.results for f in r.findings]
    for line in lines[:SUMMARY_LINES]:
        tr.write_line(line)
    if len(lines) > SUMMARY_LINES:
        tr.write_line(f"... {len(lines) - SUMMARY_LINES} more in the report")
    top = [d for d in run.durations if d.by == "check"][:8]
    if top:
        tr.write_line("time by check (summed over workers): " + ", ".join(
            f"{d.name} {d.total_s:.0f} s ({d.checks})" for d in top))
        models = [d for d in run.durations if d.by == "model"][:6]
        if models:
            tr.write_line("time by model: " + ", ".join(
                f"{d.name} {d.total_s:.0f} s ({d.checks})" for d in models))
    tr.write_line(f"results: {config._infinilm_results_path}")
    if getattr(config, "_infinilm_report_path", None) is not None:
        tr.write_line(f"report:  {config._infinilm_report_path} "
                      f"(rendered in {config._infinilm_report_seconds:.2f} s)")
    if getattr(config, "_infinilm_job_board", None) is not None:
        tr.write_line(f"job:     {config._infinilm_job_board} (scoreboard of job "
                      f"{run.environment['job']['name']})")
    if getattr(config, "_infinilm_job_board_error", None):
        tr.write_line(f"JOB SCOREBOARD NOT WRITTEN: {config._infinilm_job_board_error}",
                      red=True)
    if getattr(config, "_infinilm_report_error", None):
        tr.write_line(f"REPORT NOT RENDERED: {config._infinilm_report_error}", red=True,
                      bold=True)
