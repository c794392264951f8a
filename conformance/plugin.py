"""pytest plugin of the conformance suite: options, fixtures, result recording.

Registered through the `pytest11` entry point, so `pytest --help` lists its options
under "infinilm conformance". Every check ends as one recorded result (passed, failed,
crashed, unsupported, known_defect or error) in reports/<run-id>/results.json.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from .isolation import CrashedCheck
from .metrics import Comparison, TolerancePolicy, compare, compare_exact
from .results import STATUSES, append_part, new_run_id, point_latest, write_results

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ALL_DTYPES = ("f32", "f16", "bf16")
UNSUPPORTED_PREFIX = "unsupported: "
KNOWN_DEFECTS = Path(__file__).with_name("known_defects.toml")
_controller_config: pytest.Config | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("infinilm conformance", "InfiniCore LLaMA conformance suite")
    g.addoption("--infini-device", default=os.environ.get("INFINILM_DEVICE", "cpu"),
                help="InfiniCore device to test, e.g. cpu, nvidia, nvidia:1 "
                     "(default: $INFINILM_DEVICE or cpu)")
    g.addoption("--dtype", default=os.environ.get("INFINILM_DTYPES", ",".join(ALL_DTYPES)),
                help="comma-separated dtypes to check: f32,f16,bf16 (default: all three)")
    g.addoption("--model", default=None,
                help="comma-separated checkpoints for the model-level checks: fixture names "
                     "(tiny-mha, tiny-gqa, ..., smollm2) or local HF LLaMA directories "
                     "(default: $INFINILM_MODELS or every tiny fixture plus smollm2)")
    g.addoption("--tolerances", type=Path, default=None,
                help="TOML file overriding entries of conformance/tolerances.toml")
    g.addoption("--report-dir", type=Path, default=None,
                help="where run directories are written (default: <rootdir>/reports)")
    g.addoption("--known-defects", type=Path, default=KNOWN_DEFECTS,
                help="TOML list of upstream defects applied as strict xfails "
                     "(default: conformance/known_defects.toml)")
    g.addoption("--fail-on-unsupported", action="store_true",
                help="count an op/dtype the backend does not support as a failure")
    g.addoption("--bench-scale", default=os.environ.get("INFINILM_BENCH_SCALE", "auto"),
                choices=("auto", "smoke", "cpu", "full"),
                help="sizes of the conformance/perf benchmarks: smoke (tiny, for runs with "
                     "timing disabled), cpu (reduced, fits a 2-core CPU), full (the issue's "
                     "SmolLM2-135M shapes, for GPUs); auto picks smoke when timing is "
                     "disabled, else cpu or full by device")


def _dtypes(config: pytest.Config) -> list[str]:
    values = [d.strip().lower() for d in str(config.getoption("--dtype")).split(",") if d.strip()]
    bad = [d for d in values if d not in ALL_DTYPES]
    if bad or not values:
        raise pytest.UsageError(f"--dtype: unknown {bad or values}; choose from {ALL_DTYPES}")
    return values


# tryfirst: the JUnit path default must be set before pytest's junitxml plugin reads it in
# its own pytest_configure.
@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    try:
        # torch before InfiniCore: on NVIDIA, libinfiniop pulls the system CUDA toolkit's
        # libcublas/libcudart; loaded first, their sonames shadow torch's own CUDA wheels and
        # importing torch afterwards aborts the process. The other order works.
        import torch  # noqa: F401
    except ImportError:
        pass
    config.addinivalue_line("markers", "known_defect: an upstream InfiniCore defect (strict xfail)")
    _dtypes(config)
    if config.option.collectonly or getattr(config.option, "help", False):
        return
    device = config.getoption("--infini-device")
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # an xdist worker: the controller chose the run directory
        config._infinilm_run_dir = Path(workerinput["infinilm_run_dir"])
        config._infinilm_worker = workerinput["workerid"]
        return
    global _controller_config
    _controller_config = config
    root = config.getoption("--report-dir") or Path(config.rootpath) / "reports"
    run_id = new_run_id(device)
    config._infinilm_report_root = root.resolve()
    config._infinilm_run_id = run_id
    config._infinilm_run_dir = (root / run_id).resolve()
    config._infinilm_run_dir.mkdir(parents=True, exist_ok=True)
    config._infinilm_worker = "main"
    config._infinilm_started = time.time()
    if not getattr(config.option, "xmlpath", None):
        # CI systems read JUnit XML; every run gets one next to its results.json.
        config.option.xmlpath = str(config._infinilm_run_dir / "junit.xml")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # xdist: hand the run directory to each worker
    node.workerinput["infinilm_run_dir"] = str(node.config._infinilm_run_dir)


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem: str, report, sched) -> None:
    """xdist: a worker died inside a test (a segfaulting kernel). The worker could not
    record it, so the controller does; xdist restarts the worker and the run goes on."""
    run_dir = getattr(_controller_config, "_infinilm_run_dir", None)
    if run_dir is None:
        return
    module = crashitem.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
    name = crashitem.split("::")[-1]
    status, extra = "crashed", {}
    defect = _known_defect_for(_controller_config, crashitem)
    if defect is not None:
        # A known crashing defect: turn the synthesized failure into the xfail it is.
        status = "known_defect"
        extra["known_defect"] = {k: defect[k] for k in ("id", "reason", "evidence")}
        report.outcome = "skipped"
        report.wasxfail = f"known defect {defect['id']}: {defect['reason']}"
    append_part(run_dir, "controller", {
        **extra,
        "nodeid": crashitem,
        "check": module.removeprefix("test_"),
        "test": name.split("[")[0],
        "params": {"id": name[len(name.split("[")[0]) + 1:-1]} if "[" in name else {},
        "status": status,
        "message": str(report.longrepr)[-4000:],
        "duration_s": 0.0,
        "comparisons": [],
        "info": {},
    })


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model_name" in metafunc.fixturenames and not _explicit(metafunc, "model_name"):
        from .model.harness import model_names

        metafunc.parametrize("model_name", model_names(metafunc.config.getoption("--model")))
    if "dtype" in metafunc.fixturenames and not _explicit(metafunc, "dtype"):
        metafunc.parametrize("dtype", _dtypes(metafunc.config))


def _explicit(metafunc: pytest.Metafunc, name: str) -> bool:
    """The test parametrizes `name` itself, overriding the command-line default."""
    return any(name in [a.strip() for a in str(m.args[0]).split(",")]
               for m in metafunc.definition.iter_markers("parametrize"))


def _load_known_defects(path: Path) -> list[dict]:
    try:
        with open(path, "rb") as f:
            entries = tomllib.load(f).get("defect", [])
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise pytest.UsageError(f"--known-defects {path}: {e}") from None
    for e in entries:
        missing = {"id", "device", "nodeid", "reason", "evidence"} - set(e)
        if missing:
            raise pytest.UsageError(f"{path}: defect {e.get('id')!r} lacks {sorted(missing)}")
    return entries


def _known_defect_for(config: pytest.Config, nodeid: str) -> dict | None:
    """The known_defects.toml entry covering this test on the device under test, if any."""
    cache = getattr(config, "_infinilm_defects", None)
    if cache is None:
        device_type = config.getoption("--infini-device").split(":")[0]
        cache = [d for d in _load_known_defects(config.getoption("--known-defects"))
                 if d["device"] in (device_type, "*")]
        config._infinilm_defects = cache
    for defect in cache:
        patterns = defect["nodeid"] if isinstance(defect["nodeid"], list) else [defect["nodeid"]]
        if any(_nodeid_matches(p, nodeid) for p in patterns):
            return defect
    return None


def _nodeid_matches(pattern: str, nodeid: str) -> bool:
    """Shell-style '*' wildcards; brackets are literal (they are in parametrized ids)."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, nodeid) is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        defect = _known_defect_for(config, item.nodeid)
        if defect is None:
            continue
        # strict: when InfiniCore gets fixed the xpass fails, so the entry is removed.
        item.add_marker(pytest.mark.xfail(
            strict=True, reason=f"known defect {defect['id']}: {defect['reason']}"))
        item.user_properties.append(("known_defect", {k: defect[k] for k in (
            "id", "reason", "evidence")}))


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def infini_device(pytestconfig: pytest.Config):
    from infinilm_models.runtime import Device, device_count

    dev = Device.parse(pytestconfig.getoption("--infini-device"))
    n = device_count(dev.type)
    if dev.index >= n:
        raise pytest.UsageError(
            f"--infini-device {dev}: the InfiniCore build at hand sees {n} {dev.type} device(s)")
    return dev


@pytest.fixture(scope="session")
def tolerances(pytestconfig: pytest.Config) -> TolerancePolicy:
    return TolerancePolicy.load(pytestconfig.getoption("--tolerances"))


class Verify:
    """What a check uses to judge and record: every comparison lands in the results."""

    def __init__(self, request: pytest.FixtureRequest, policy: TolerancePolicy) -> None:
        self.request = request
        self.policy = policy
        self.comparisons: list[dict] = []
        self.info: dict = {}

    def close(self, actual, expected, check: str, dtype: str, what: str = "output") -> Comparison:
        """Assert `actual` matches `expected` within the tolerance of (check, dtype)."""
        result = compare(actual, expected, self.policy.get(check, dtype), what)
        self._keep(result, what)
        assert result.passed, result.reason
        return result

    def measure(self, actual, expected, check: str, dtype: str, what: str) -> Comparison:
        """Record a comparison without asserting (the caller decides)."""
        result = compare(actual, expected, self.policy.get(check, dtype), what)
        self._keep(result, what)
        return result

    def exact(self, actual, expected, what: str = "output") -> Comparison:
        result = compare_exact(actual, expected, what)
        self._keep(result, what)
        assert result.passed, result.reason
        return result

    def _keep(self, result: Comparison, what: str) -> None:
        self.comparisons.append({"what": what, **result.to_dict()})

    def unsupported(self, error: BaseException) -> None:
        """The backend refuses this op/dtype/layout: an explicit 'unsupported' result."""
        msg = f"{UNSUPPORTED_PREFIX}{error}"
        if self.request.config.getoption("--fail-on-unsupported"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def verify(request: pytest.FixtureRequest, tolerances: TolerancePolicy) -> Verify:
    v = Verify(request, tolerances)
    request.node._infinilm_verify = v
    return v


# -- recording ----------------------------------------------------------------------------


def _status(report: pytest.TestReport, call: pytest.CallInfo) -> tuple[str, str]:
    if hasattr(report, "wasxfail"):
        return ("known_defect", report.wasxfail) if report.skipped else \
            ("failed", f"known defect no longer reproduces (XPASS strict): {report.wasxfail}")
    if report.passed:
        return "passed", ""
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        if reason.startswith(UNSUPPORTED_PREFIX):
            return "unsupported", reason[len(UNSUPPORTED_PREFIX):]
        # Any other skip would hide a check; it is recorded as an error, never as a pass.
        return "error", f"skipped without an 'unsupported' verdict: {reason}"
    excinfo = call.excinfo
    message = excinfo.exconly() if excinfo is not None else str(report.longrepr)[-2000:]
    if excinfo is not None and excinfo.errisinstance(CrashedCheck):
        return "crashed", message
    if report.when != "call":
        return "error", f"{report.when}: {message}"
    return "failed", message


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
    status, message = _status(report, call)
    params = dict(getattr(item, "callspec", None).params) if hasattr(item, "callspec") else {}
    verify: Verify | None = getattr(item, "_infinilm_verify", None)
    module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
    record = {
        "nodeid": item.nodeid,
        "check": module.removeprefix("test_"),
        "test": item.originalname if hasattr(item, "originalname") else item.name,
        "params": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                   for k, v in params.items()},
        "status": status,
        "message": message[-4000:],
        "duration_s": round(report.duration, 4),
        "comparisons": verify.comparisons if verify else [],
        "info": verify.info if verify else {},
    }
    for key, value in item.user_properties:
        if key == "known_defect":
            record["known_defect"] = value
    append_part(run_dir, item.config._infinilm_worker, record)


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
    path = write_results(
        run_dir, config._infinilm_run_id,
        config.getoption("--infini-device"), config._infinilm_started, int(exitstatus),
        {"dtypes": _dtypes(config), "tolerance_sources": tol.sources,
         "tolerances": tol.table, "junit_xml": str(junit) if junit else None})
    config._infinilm_results_path = path
    _render_report(session, run_dir)
    point_latest(config._infinilm_report_root, run_dir)


def _render_report(session: pytest.Session, run_dir: Path) -> None:
    """index.html from the results.json just written, whatever the tests' outcome.

    A rendering failure must not hide the results (results.json and junit.xml are already
    written) but must not pass unnoticed either: a CI job publishing the report would
    publish nothing. So the traceback is printed and an otherwise green session exits
    with INTERNAL_ERROR (3); a red one keeps its own non-zero status."""
    config = session.config
    started = time.perf_counter()
    try:
        from .report.render import render_run

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
    path = getattr(config, "_infinilm_results_path", None)
    if path is None:
        return
    import json

    doc = json.loads(Path(path).read_text())
    tr = terminalreporter
    tr.section("infinilm conformance")
    counts = doc["counts"]
    tr.write_line("verdict: " + doc["verdict"].upper() + "   " +
                  "  ".join(f"{s}={counts.get(s, 0)}" for s in STATUSES))
    by_check: dict[str, dict[str, int]] = {}
    for r in doc["results"]:
        row = by_check.setdefault(r["check"], {s: 0 for s in STATUSES})
        row[r["status"]] += 1
    width = max([len(c) for c in by_check] + [5])
    tr.write_line(f"{'check':<{width}}  " + "  ".join(f"{s:>12}" for s in STATUSES))
    for check_name in sorted(by_check):
        tr.write_line(f"{check_name:<{width}}  " +
                      "  ".join(f"{by_check[check_name][s]:>12}" for s in STATUSES))
    for r in doc["results"]:
        if r["status"] in ("unsupported", "known_defect"):
            tr.write_line(f"{r['status']}: {r['nodeid']}: {r['message'][:200]}")
    tr.write_line(f"results: {path}")
    if getattr(config, "_infinilm_report_path", None) is not None:
        tr.write_line(f"report:  {config._infinilm_report_path} "
                      f"(rendered in {config._infinilm_report_seconds:.2f} s)")
    if getattr(config, "_infinilm_report_error", None):
        tr.write_line(f"REPORT NOT RENDERED: {config._infinilm_report_error}", red=True,
                      bold=True)
