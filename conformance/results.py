"""Where records live while a run goes, and the environment block of results.json.

Each pytest process (the controller, every xdist worker, and their supervised children)
appends finished checks to `parts/<worker>.jsonl`, and every process that collects writes
the checks it plans to run to `plan/<worker>.jsonl`; no state is shared between
processes. At the end the controller merges both into one `RunRecord` (record.py): a
planned check without a result becomes `not_run`. results.json is written to a temporary
file and renamed into place.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .record import CheckRecord, RecordError, RunRecord, summarize, verdict_of


def _naming(e: OSError, path: Path) -> OSError:
    """The same error, saying which file (mkstemp's errors name a temporary one)."""
    return type(e)(e.errno, f"cannot write {path}: {e.strerror}") if e.errno else \
        type(e)(f"cannot write {path}: {e}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `path` through a temporary file renamed into place; an error names `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise _naming(e, path) from None
    try:
        # mkstemp creates 0600; reports are published (CI artifacts, web servers), so give
        # the file the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _naming(e, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def slug(text: str, limit: int = 64) -> str:
    """`text` as one file-name-safe component (letters, digits, `.`, `_`, `-`)."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "unnamed"
    return out[:limit]


def build_slug(key: str | None, digits: int = 12) -> str:
    """A build identity key as a file name: `pypi:0.1.0` -> `pypi-0.1.0`, `git:<40 hex>` ->
    `git-<first digits>`; a missing key (no InfiniCore found) -> `nobuild`."""
    if not key:
        return "nobuild"
    kind, sep, value = key.partition(":")
    if sep and re.fullmatch(r"[0-9a-fA-F]{16,}", value):
        value = value[:digits]
    return slug(f"{kind}-{value}" if sep else kind)


def current_build_key() -> str | None:
    """The identity key of the InfiniCore this process would load (read from its files,
    without loading it); None where there is none."""
    try:
        from infinilm_models.runtime.capabilities import current_build

        return current_build().identity.key
    except Exception:  # noqa: BLE001 - a run without a build still gets an id
        return None


def new_run_id(device: str, root: Path | None = None, build_key: str | None = None) -> str:
    """`<time>-<device>-<build>`, e.g. `20261204-101500-cpu-pypi-0.1.0`: which device and
    which InfiniCore ran, readable in a listing of reports/. With `root`, the run
    directory is created here, so two runs starting in the same second get `-2`, `-3`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    key = build_key if build_key is not None else current_build_key()
    base = f"{stamp}-{slug(device.replace(':', ''))}-{build_slug(key)}"
    if root is None:
        return base
    for n in range(1, 1000):
        run_id = base if n == 1 else f"{base}-{n}"
        try:
            (Path(root) / run_id).mkdir(parents=True)
            return run_id
        except FileExistsError:
            continue
        except OSError:
            return run_id  # the caller's own mkdir reports an unwritable --report-dir
    return f"{base}-{os.getpid()}"


def point_latest(report_root: Path, run_dir: Path) -> None:
    """reports/latest -> `run_dir` (the newest run, or a job's primary run), atomically."""
    link = report_root / "latest"
    tmp = report_root / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)


def append_part(run_dir: Path, worker: str, record: CheckRecord, kind: str = "parts") -> None:
    d = run_dir / kind
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"{worker}.jsonl", "a") as f:
        f.write(json.dumps(record.to_dict(), default=_jsonable) + "\n")


def write_plan(run_dir: Path, worker: str, records: list[CheckRecord]) -> None:
    lines = "".join(json.dumps(r.to_dict(), default=_jsonable) + "\n" for r in records)
    atomic_write_text(run_dir / "plan" / f"{worker}.jsonl", lines)


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def read_records(run_dir: Path, kind: str = "parts") -> dict[str, CheckRecord]:
    """nodeid -> record; a later line for the same check wins (a crash record written by
    a supervisor after its child's partial one)."""
    out: dict[str, CheckRecord] = {}
    for part in sorted((run_dir / kind).glob("*.jsonl")):
        for n, line in enumerate(part.read_text().splitlines(), 1):
            if line.strip():
                try:
                    r = CheckRecord.from_dict(json.loads(line), f"{part}:{n}")
                except (ValueError, RecordError):
                    continue  # a line cut short by a dying process
                out[r.nodeid] = r
    return out


def environment(device: str) -> dict:
    """Where and how the run happened; recorded in results.json and shown by the report.

    Every field is best effort: a missing fact is recorded as null (or an *_error field),
    because the environment block must never sink a run."""
    env: dict = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "infini_device": device,
        "device_name": device_name(device),
        "cpus": cpus(),
        "command_line": shlex.join(sys.argv),
        "infini_root_env": os.environ.get("INFINI_ROOT"),
        "infinicore_version": None,
        "backend": None,
        "library_sha256": {},
    }
    try:
        from infinilm_models.runtime.capabilities import current_build

        build = current_build()
        env["infini_root"] = str(build.root)
        # Which InfiniCore this is (source, commit, options, patches) and what it exports.
        env["infinicore"] = build.describe()
        stamp = build.stamp
        env["infinicore_build"] = stamp
        if stamp:
            env["infinicore_version"] = stamp.get("infinicore_version")
            env["backend"] = stamp.get("backend")
        # Hashes identify the exact binaries, also for a vendor's own build without a stamp.
        env["library_sha256"] = dict(build.library_sha256)
    except Exception as e:  # noqa: BLE001 - the environment block must never sink a run
        env["infini_root_error"] = str(e)
    if env["backend"] is None:
        env["backend"] = device.split(":")[0]
    env["machine_id"] = machine_id(env["device_name"], env["cpus"])
    for mod in ("numpy", "torch", "transformers"):
        m = sys.modules.get(mod)
        if m is not None:
            env[f"{mod}_version"] = getattr(m, "__version__", "?")
    try:
        env["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


MACHINE_ENV = "INFINILM_MACHINE_ID"


def cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def machine_id(device_name: str | None, cpus: int | None) -> str:
    """Which machine a run's numbers belong to, for baselines and benchmark history:
    $INFINILM_MACHINE_ID where a runner names its machine class, else the architecture,
    the device's product name and the CPUs this process may use. Never the host name: CI
    runners are ephemeral, and one machine class must find its own baseline again."""
    named = os.environ.get(MACHINE_ENV, "").strip()
    if named:
        return slug(named)
    parts = [platform.machine() or "unknown", device_name or platform.processor() or "",
             f"{cpus}cpu" if cpus else ""]
    return slug("-".join(p for p in parts if p), limit=96)


def device_name(device: str) -> str | None:
    """A human name for the device under test (CPU model, GPU product name)."""
    kind, _, index = device.partition(":")
    try:
        if kind == "cpu":
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
            return platform.processor() or None
        if kind == "nvidia":
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available():
                return torch.cuda.get_device_name(int(index or 0))
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", index or "0"],
                capture_output=True, text=True, timeout=10).stdout.strip()
            return out or None
    except Exception:  # noqa: BLE001 - a name is nice to have, never required
        return None
    return None


def assemble(run_dir: Path, run_id: str, device: str, started: float, exit_status: int,
             not_run_reason: str, extra: dict) -> RunRecord:
    """The run's records, every planned check included: one without a result is
    `not_run` with `not_run_reason`."""
    records = read_records(run_dir)
    plan = read_records(run_dir, "plan")
    for nodeid, planned in plan.items():
        if nodeid not in records:
            planned.status = "not_run"
            planned.not_run_reason = not_run_reason
            planned.message = f"not run: {not_run_reason}"
            records[nodeid] = planned
    results = sorted(records.values(), key=lambda r: r.nodeid)
    return RunRecord(
        run_id=run_id, verdict=verdict_of(results), counts=summarize(results),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        duration_s=round(time.time() - started, 2), pytest_exit_status=exit_status,
        environment=environment(device), results=results, planned=len(plan) or len(results),
        **extra)


def write_results(run_dir: Path, run: RunRecord) -> Path:
    out = run_dir / "results.json"
    atomic_write_text(out, run.to_json())
    return out
