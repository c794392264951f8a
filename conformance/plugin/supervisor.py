"""Crash isolation: checks run in a supervised child process, so a kernel that kills its
process is one `crashed` check, in every run mode.

Each pytest process that runs checks (a serial run, or every xdist worker) forks, after
collection, one long-lived child that runs its checks one by one and sends each check's
reports back over a pipe; the parent hands them to pytest's reporting hooks (terminal,
JUnit, xdist), so the run reads as if it ran in the parent. Session fixtures (models,
references) live in the child and are reused from check to check. When the child dies
(a signal, an abort, an exit, or no answer within --check-timeout), the parent records
that check as crashed with the signal, the op and the last InfiniCore call (from the
child's faulthandler traceback) and forks a fresh child for the remaining checks. Crash
isolation therefore does not depend on xdist's restart budget, and a serial run that
crashes still writes its results and report.

The parent never touches InfiniCore or runs torch code, so forking it is safe (CUDA and
OpenMP are initialized in children only).
"""

from __future__ import annotations

import faulthandler
import mmap
import os
import re
import signal
import time
import traceback
from multiprocessing.connection import Connection, Pipe
from pathlib import Path

import pytest
from _pytest.reports import TestReport
from _pytest.runner import runtestprotocol

from ..record import Crash
from ..results import append_part
from . import defects
from .recording import MESSAGE_LIMIT, base_record, settle_crash

KILL_GRACE_S = 10.0


def enabled(config: pytest.Config) -> bool:
    mode = config.getoption("--isolate")
    if mode == "no":
        return False
    if mode == "yes":
        return True
    opt = config.option
    # Timed benchmarks run supervised too: the child sends each benchmark's rounds back
    # with its reports (benchmarks_to_parent), so a kernel that crashes under
    # conformance/perf is one crashed benchmark and the run, its table and its JSON go on.
    return not (opt.usepdb or getattr(opt, "trace", False))


class Supervisor:
    def __init__(self, session: pytest.Session) -> None:
        self.session = session
        self.config = session.config
        self.run_dir: Path = self.config._infinilm_run_dir
        self.worker: str = self.config._infinilm_worker
        self.timeout: float = self.config.getoption("--check-timeout")
        self.items = {i.nodeid: i for i in session.items}
        self.pid: int | None = None
        self.conn: Connection | None = None
        self.crash_file: Path | None = None
        self.crashes = 0
        self.timed_out = False
        # One base temporary directory for every child (pytest keeps the newest 3 only).
        factory = getattr(self.config, "_tmp_path_factory", None)
        if factory is not None:
            factory.getbasetemp()

    # -- parent side ------------------------------------------------------------------------

    def run(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool:
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        started = time.time()
        reports = self._execute(item, nextitem)
        if reports is None:
            reports = [self._crashed(item, time.time() - started)]
        for rep in reports:
            ihook.pytest_runtest_logreport(report=rep)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    def _execute(self, item: pytest.Item, nextitem: pytest.Item | None
                 ) -> list[TestReport] | None:
        if self.pid is None:
            self._spawn()
        try:
            self.conn.send((item.nodeid, nextitem.nodeid if nextitem is not None else None))
            if not self.conn.poll(self.timeout):
                self._kill(timeout=True)
                return None
            data, benchmarks = self.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            return None
        benchmarks_from_child(self.config, benchmarks)
        return [self.config.hook.pytest_report_from_serializable(config=self.config, data=d)
                for d in data]

    def _spawn(self, env: dict[str, str] | None = None) -> None:
        parent, child = Pipe()
        crash_dir = self.run_dir / "crash"
        crash_dir.mkdir(parents=True, exist_ok=True)
        self.crash_file = crash_dir / f"{self.worker}-{len(os.listdir(crash_dir))}.txt"
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest's own flow
            code = 70
            try:
                parent.close()
                os.environ.update(env or {})
                code = self._child_main(child, self.crash_file)
            except BaseException:  # noqa: BLE001 - nothing may escape into the parent's flow
                traceback.print_exc()
            finally:
                os._exit(code)
        child.close()
        self.pid, self.conn, self.timed_out = pid, parent, False

    def _kill(self, timeout: bool) -> None:
        """SIGABRT first, so the child's faulthandler prints where it hangs."""
        self.timed_out = timeout
        try:
            os.kill(self.pid, signal.SIGABRT)
        except ProcessLookupError:
            pass

    def _reap(self, grace: float = KILL_GRACE_S) -> tuple[str | None, int | None]:
        """(signal name, exit code) of the child, which is dying: it gets `grace` seconds
        (faulthandler may still be writing) before SIGKILL."""
        status = None
        deadline = time.time() + grace
        try:
            while status is None:
                pid, st = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    status = st
                elif time.time() > deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    _, status = os.waitpid(self.pid, 0)
                else:
                    time.sleep(0.02)
        except (ChildProcessError, ProcessLookupError):
            status = None
        finally:
            if self.conn is not None:
                self.conn.close()
            self.pid, self.conn = None, None
        if status is None:
            return None, None
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                return signal.Signals(sig).name, -sig
            except ValueError:
                return f"signal {sig}", -sig
        return None, os.WEXITSTATUS(status)

    def _crashed(self, item: pytest.Item, duration: float) -> TestReport:
        timed_out = self.timed_out
        sig, code = self._reap()
        self.crashes += 1
        text = self.crash_file.read_text(errors="replace") if self.crash_file and \
            self.crash_file.is_file() else ""
        op, last_call = parse_traceback(text)
        in_flight = _read_mark(self.crash_file.with_suffix(".call"))
        if in_flight is not None:
            # faulthandler's dump can be cut short or garbled (two threads faulting at
            # once: the innermost frame lost, so the first readable one is the op's Python
            # wrapper, not a C call); the call marked before it was made is always there.
            name, tensors = in_flight
            op = op or _py_op_name(name)
            if last_call is None or "interleaved" in last_call or \
                    not last_call.startswith("infini"):
                last_call = f"infiniop{name} ({tensors})"
        crash = Crash(signal=sig, exit_code=code, timeout=timed_out, op=op,
                      last_call=last_call, traceback=_trim(text))
        how = (f"no result within {self.timeout:.0f} s (killed)" if timed_out else
               f"process killed by {sig}" if sig else f"process exited with status {code}")
        where = f"; op {op}" if op else ""
        where += f"; last InfiniCore call {last_call}" if last_call else ""
        message = f"crashed: {how}{where}"
        record = base_record(item)
        record.status, record.message, record.crash = "crashed", message, crash
        record.duration_s = round(duration, 4)
        defect = defects.defect_for(self.config, item.nodeid, record.model)
        settle_crash(record, defect)
        message = record.message
        if "/ops/" in item.nodeid.replace("\\", "/") and record.status == "crashed":
            record.bundle = self._crash_bundle(item)
        append_part(self.run_dir, self.worker, record)
        report = TestReport(item.nodeid, item.location, {k: 1 for k in item.keywords},
                            "failed", f"{message}\n\n{text}", "call", [], duration, [])
        if record.status == "known_defect":
            report.outcome = "skipped"
            report.wasxfail = f"known defect {defect.id}: {defect.reason}"
        return report

    def _crash_bundle(self, item: pytest.Item) -> str | None:
        """Run the crashed op check once more in a fresh child that writes each InfiniCore
        call to disk before making it: the call that kills it is left behind as a replay
        bundle."""
        from ..replay import PENDING_ENV, bundle_dir

        target = bundle_dir(self.run_dir, item.nodeid)
        self._spawn({PENDING_ENV: str(target)})
        if self._execute(item, None) is None:
            self._reap()
        else:
            self.shutdown()
        return str(target.relative_to(self.run_dir)) if (target / "calls.json").is_file() \
            else None

    def shutdown(self, kill: bool = False) -> None:
        if self.pid is None:
            return
        if kill:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap(grace=5)
            return
        try:
            self.conn.send(None)
            self.conn.poll(60)
        except (OSError, EOFError, BrokenPipeError):
            pass
        self._reap(grace=60)

    # -- child side -------------------------------------------------------------------------

    def _child_main(self, conn: Connection, crash_file: Path) -> int:
        fh = open(crash_file, "w")  # noqa: SIM115 - must outlive any crash in this process
        faulthandler.enable(file=fh, all_threads=True)
        _mark_calls(crash_file.with_suffix(".call"))
        config = self.config
        while True:
            msg = conn.recv()
            if msg is None:
                conn.send(None)
                return 0
            nodeid, next_id = msg
            item = self.items[nodeid]
            nextitem = self.items.get(next_id) if next_id is not None else None
            bs = getattr(config, "_benchmarksession", None)
            before = len(bs.benchmarks) if bs is not None else 0
            reports = runtestprotocol(item, nextitem=nextitem, log=False)
            conn.send(([config.hook.pytest_report_to_serializable(config=config, report=r)
                        for r in reports], benchmarks_to_parent(config, before)))


# -- timed benchmarks cross from the child to the parent -------------------------------------

# Session state a benchmark's fixtures leave on the config in the child that the parent's
# pytest-benchmark hooks read at the end (conformance/perf: the device's peak table entry).
SHIPPED_CONFIG = ("_infinilm_peak",)


def benchmarks_to_parent(config: pytest.Config, before: int) -> dict:
    """The child's pytest-benchmark results of one check, as plain data."""
    bs = getattr(config, "_benchmarksession", None)
    out: dict = {"config": {k: getattr(config, k) for k in SHIPPED_CONFIG
                            if hasattr(config, k)}, "benchmarks": []}
    if bs is None:
        return out
    for m in bs.benchmarks[before:]:
        out["benchmarks"].append({
            "name": m.name, "fullname": m.fullname, "group": m.group, "param": m.param,
            # pytest parameters can be any object; as pytest-benchmark's JSON would show them
            "params": None if m.params is None else {
                k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
                for k, v in m.params.items()},
            "extra_info": dict(m.extra_info),
            "iterations": m.iterations, "has_error": bool(m.has_error),
            "options": {k: (v.__name__ if callable(v) else v) for k, v in m.options.items()},
            "data": list(m.stats.data)})
    return out


def benchmarks_from_child(config: pytest.Config, shipped: dict) -> None:
    """Rebuild the child's benchmark results in this process's pytest-benchmark session,
    so its table, --benchmark-json and saving see them as if they ran here."""
    for k, v in (shipped.get("config") or {}).items():
        setattr(config, k, v)
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not shipped.get("benchmarks"):
        return
    from types import SimpleNamespace

    from pytest_benchmark.stats import Metadata

    for b in shipped["benchmarks"]:
        fixture = SimpleNamespace(name=b["name"], fullname=b["fullname"], group=b["group"],
                                  param=b["param"], params=b["params"],
                                  extra_info=b["extra_info"], cprofile_stats=None,
                                  has_error=b["has_error"])
        meta = Metadata(fixture, iterations=b["iterations"], options=b["options"])
        for x in b["data"]:
            meta.stats.update(x)
        bs.benchmarks.append(meta)


def _trim(text: str) -> str:
    """The faulthandler dump without pytest's and pluggy's own frames (the check's frames
    come first: most recent call first)."""
    keep = [line for line in text.splitlines()
            if not ("/_pytest/" in line or "/pluggy/" in line or "<frozen runpy>" in line
                    or line.startswith("Extension modules:"))]
    return "\n".join(keep)[:MESSAGE_LIMIT]


# A function name ends at whitespace, or where a second thread's header was written straight
# after it (two threads faulting at once: "... in _computeThread 0x7f... (most recent ...").
_FRAME = re.compile(r'File "([^"]+)", line (\d+) in (\S+?)(?=Thread 0x|Current thread|\s|$)')
_MEMORY_CALLS = {"memcpy": "infinirtMemcpy", "__init__": "infinirtMalloc",
                 "free": "infinirtFree", "synchronize": "infinirtDeviceSynchronize",
                 "activate": "infinirtSetDevice", "handle": "infiniopCreateHandle",
                 "zero_fill": "infinirtMemcpy", "load": "infinirtInit"}


def parse_traceback(text: str) -> tuple[str | None, str | None]:
    """(op, last InfiniCore call) from a faulthandler dump (most recent call first)."""
    frames = [(f, int(n), fn) for f, n, fn in _FRAME.findall(text)]
    runtime = [fr for fr in frames if "infinilm_models/runtime/" in fr[0].replace("\\", "/")]
    if not runtime:
        return _parse_interleaved(text)
    op = None
    for f, _, fn in runtime:
        path = f.replace("\\", "/")
        if "/runtime/ops/" in path and not path.endswith("/_base.py"):
            op = fn.removeprefix("prepare_")
            break
    f, line, fn = runtime[0]
    name = Path(f).name
    if name == "_base.py" and op is not None:
        call = _op_call(op, fn)
    else:
        call = _MEMORY_CALLS.get(fn, fn)
    return op, f"{call} ({name}:{line} {fn})"


_OPS_FILE = re.compile(r"infinilm_models/runtime/ops/(\w+)\.py")


def _parse_interleaved(text: str) -> tuple[str | None, str | None]:
    """Two threads that fault at once (OpenMP workers of one kernel) interleave their
    dumps character by character; the file and function names still appear whole."""
    stems = [m for m in _OPS_FILE.findall(text) if m != "_base"]
    if not stems:
        return None, None
    op = stems[0]
    if op == "elementwise":
        op = "mul" if " in mul" in text or "in \nmul" in text else "add"
    where = "_create" if "_create" in text and "_compute" not in text else "_compute"
    return op, f"{_op_call(op, where)} (from an interleaved dump)"


def _op_call(op: str, fn: str) -> str:
    c_name = _c_op_name(op)
    return {"_compute": f"infiniop{c_name}", "_create": f"infiniopCreate{c_name}Descriptor",
            "tensor_descriptor": "infiniopCreateTensorDescriptor",
            "_destroy": f"infiniopDestroy{c_name}Descriptor"}.get(fn, f"infiniop{c_name}")


MARK_BYTES = 512


def _mark_calls(path: Path) -> None:
    """Before each InfiniCore op call, write its name and operands to a small mapped file
    that outlives this process."""
    from infinilm_models.runtime.ops._base import CachedOp

    with open(path, "w+b") as f:
        f.write(b"\0" * MARK_BYTES)
        f.flush()
        mm = mmap.mmap(f.fileno(), MARK_BYTES)

    def mark(op, tensors, *_args) -> None:
        text = (op.name + "|" + ", ".join(f"{n}={t.describe()}" for n, t in
                                          zip(op.tensor_names, tensors) if t is not None)
                ).encode()
        text = text[:MARK_BYTES - 1]
        mm[:len(text) + 1] = text + b"\0"

    CachedOp.hooks = CachedOp.hooks + (mark,)


def _read_mark(path: Path) -> tuple[str, str] | None:
    try:
        raw = path.read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return None
    if "|" not in raw:
        return None
    name, tensors = raw.split("|", 1)
    return name, tensors


def _py_op_name(c_name: str) -> str:
    """The wrapper name of a C op name (RMSNorm -> rms_norm)."""
    from infinilm_models.runtime.ops.specs import BY_NAME

    found = BY_NAME.get(c_name)
    return found.py if found is not None else c_name


def _c_op_name(op: str) -> str:
    """The C op name of a wrapper (rms_norm -> RMSNorm; copy is a rearrange)."""
    from infinilm_models.runtime.ops.specs import BY_PY

    found = BY_PY.get({"copy": "rearrange", "contiguous": "rearrange"}.get(op, op))
    return found.name if found is not None else op
