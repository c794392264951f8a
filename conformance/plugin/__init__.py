"""pytest plugin of the conformance suite, registered through the `pytest11` entry point.

One module per job:
  options     command-line options (`pytest --help`, group "infinilm conformance")
  defects     known upstream defects and their envelopes
  verify      the `verify` fixture (what checks state) and the session fixtures
  recording   items and reports -> CheckRecords; the plan written at collection
  narrowing   cases left out on this device: planned, recorded unsupported with the reason
  supports    an op check whose C op the build does not export: unsupported at collection
  bringup     --support, --dump-tensors, --infiniop-cases and the stages (conformance/stages.py)
  supervisor  crash isolation: checks run in a supervised child process
  session     the end of a run: not-run checks, results.json, the report, the summary
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from .. import jobs, stages
from ..results import append_part, new_run_id
from . import (
    bringup,
    defects,
    narrowing,
    options,
    recording,
    session,
    supervisor,
    supports,
    threads,
    verify,
)
from .options import dtypes, pytest_addoption  # noqa: F401 - a hook, found by name

_controller: pytest.Config | None = None


# tryfirst: the JUnit path default must be set before pytest's junitxml plugin reads it in
# its own pytest_configure.
@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if not getattr(config.option, "help", False):
        # First: a bad option or policy file is one line, before torch loads (seconds),
        # before any check runs and before the run directory exists.
        options.validate(config)
    try:
        # torch before InfiniCore: on NVIDIA, libinfiniop pulls the system CUDA toolkit's
        # libcublas/libcudart; loaded first, their sonames shadow torch's own CUDA wheels and
        # importing torch afterwards aborts the process. The other order works.
        import torch  # noqa: F401
    except ImportError:
        pass
    # Before InfiniCore loads (OpenMP reads it at its first parallel region) and before
    # torch runs anything: cores / workers threads each.
    config._infinilm_threads = threads.configure(config)
    for name, module in (("infinilm-verify", verify), ("infinilm-recording", recording),
                         ("infinilm-session", session), ("infinilm-narrowing", narrowing),
                         ("infinilm-supports", supports), ("infinilm-bringup", bringup)):
        if not config.pluginmanager.has_plugin(name):
            config.pluginmanager.register(module, name)
    recording.CONFIG = config
    dtypes(config)
    _select_backend(config)
    for stage, what in stages.MARKERS.items():  # also in pyproject.toml, for --strict-markers
        config.addinivalue_line("markers", f"{stage}: {what}")
    bringup.configure(config)
    if config.option.collectonly or getattr(config.option, "help", False):
        return
    defects.active(config)  # a bad known_defects.toml is a usage error, before any check
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # an xdist worker: the controller chose the run directory
        config._infinilm_run_dir = Path(workerinput["infinilm_run_dir"])
        config._infinilm_worker = workerinput["workerid"]
        return
    global _controller
    _controller = config
    _interrupt_on_sigterm()
    device = config.getoption("--infini-device")
    root = config.getoption("--report-dir") or Path(config.rootpath) / "reports"
    try:  # a CI job's runs (jobs.py): the first is its primary run
        job = jobs.job_name()
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    run_id = new_run_id(device, root)
    config._infinilm_report_root = root.resolve()
    config._infinilm_run_id = run_id
    config._infinilm_run_dir = (root / run_id).resolve()
    try:
        config._infinilm_run_dir.mkdir(parents=True, exist_ok=True)
        probe = config._infinilm_run_dir / ".writable"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        # Before any check runs: one line naming the folder, not an INTERNALERROR.
        raise pytest.UsageError(f"--report-dir {root}: cannot write the run directory "
                                f"{config._infinilm_run_dir}: {e.strerror or e}") from None
    config._infinilm_job = jobs.register(root.resolve(), job, run_id) if job else None
    from ..model.reference import CACHE_ENV

    if config.getoption("--no-reference-cache"):
        # Inherited by the workers and their children: shared within this run only.
        os.environ[CACHE_ENV] = str(config._infinilm_run_dir / "reference-cache")
    config._infinilm_worker = "main"
    config._infinilm_started = time.time()
    if not getattr(config.option, "xmlpath", None):
        # CI systems read JUnit XML; every run gets one next to its results.json.
        config.option.xmlpath = str(config._infinilm_run_dir / "junit.xml")


def _interrupt_on_sigterm() -> None:
    """A CI job's timeout or a runner's stop sends SIGTERM: end the session as an
    interruption (as Ctrl-C does), so results.json and the report are still written and
    the checks that did not run are recorded as not_run."""
    import signal
    import threading

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def _select_backend(config: pytest.Config) -> None:
    """--infini-device picks the InfiniCore build: that backend's default prefix (an
    explicit INFINI_ROOT or INFINILM_BACKEND still wins). Then the name is checked against
    the device types of the build found (its infinicore.h, read without loading it): a
    name it does not know is a one-line usage error listing those it does."""
    from infinilm_models.runtime.device import Device, backend_of
    from infinilm_models.runtime.library import LibraryNotFound, set_default_backend

    option = config.getoption("--infini-device")
    try:
        backend = backend_of(option)
        if backend is not None:
            set_default_backend(backend)
        Device.parse(option)
    except ValueError as e:
        raise pytest.UsageError(f"--infini-device: {e}") from None
    except LibraryNotFound:
        pass  # no build yet: each check says so


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    return threads.auto_workers(config)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # xdist: hand the run directory to each worker
    node.workerinput["infinilm_run_dir"] = str(node.config._infinilm_run_dir)


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem: str, report, sched) -> None:
    """xdist without --isolate: a worker died inside a check. The worker could not record
    it, so the controller does, with the check's parameters from the plan."""
    from ..record import Crash
    from ..results import read_records

    config = _controller
    if config is None:
        return
    run_dir = config._infinilm_run_dir
    planned = read_records(run_dir, "plan").get(crashitem)
    if planned is None:
        return
    planned.status = "crashed"
    planned.message = str(report.longrepr)[-recording.MESSAGE_LIMIT:]
    planned.crash = Crash(signal=None, exit_code=None, traceback=planned.message)
    defect = defects.defect_for(config, crashitem, planned.model)
    recording.settle_crash(planned, defect)
    recording.apply_to_report(report, planned.status, planned.message, defect)
    append_part(run_dir, "controller", planned)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    if error and _controller is not None:
        _controller.__dict__.setdefault("_infinilm_lost_workers", []).append(
            node.gateway.id)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model_name" in metafunc.fixturenames and "layout" not in metafunc.fixturenames \
            and not _explicit(metafunc, "model_name"):
        from ..model.harness import model_names

        metafunc.parametrize("model_name", model_names(metafunc.config.getoption("--model")))
    if "dtype" in metafunc.fixturenames and not _explicit(metafunc, "dtype"):
        metafunc.parametrize("dtype", dtypes(metafunc.config))


# Where the time goes on a 2-core CPU run (docs: README "Measured"): the real checkpoint's
# model checks, then the inner suite runs of the self-tests. Started first, so that
# xdist's workers are not left waiting on one long check at the end of the run.
_SLOW_FIRST = (("test_model_graph", "[smollm2-", "bs8"), ("test_model_", "[smollm2-f16", ""),
               ("test_model_", "[smollm2-", ""), ("test_harness_planted", "", ""))


def _cost_rank(item: pytest.Item) -> int:
    nodeid = item.nodeid
    for rank, parts in enumerate(_SLOW_FIRST):
        if all(p in nodeid for p in parts):
            return rank
    return len(_SLOW_FIRST)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slowest checks first (a stable sort: every xdist worker gets the same order);
    under --stages, stage by stage first (conformance/stages.py), then the slowest."""
    if config.getoption("--stages"):
        items.sort(key=lambda i: (stages.rank(i.nodeid), _cost_rank(i)))
    else:
        items.sort(key=_cost_rank)


def _explicit(metafunc: pytest.Metafunc, name: str) -> bool:
    """The test parametrizes `name` itself, overriding the command-line default."""
    return any(name in [a.strip() for a in str(m.args[0]).split(",")]
               for m in metafunc.definition.iter_markers("parametrize"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    config = item.config
    sup = getattr(config, "_infinilm_supervisor", False)
    if sup is False:
        sup = config._infinilm_supervisor = supervisor.Supervisor(item.session) \
            if supervisor.enabled(config) and hasattr(config, "_infinilm_run_dir") else None
    if sup is None:
        return None
    return sup.run(item, nextitem)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtestloop(session: pytest.Session):
    outcome = yield
    sup = getattr(session.config, "_infinilm_supervisor", None)
    if sup:
        # interrupted (Ctrl-C, SIGTERM): the check in flight is abandoned at once
        sup.shutdown(kill=outcome.excinfo is not None)
