"""Recorded results: one JSON line per check while the run goes, one results.json at the end.

Each pytest process (the controller, or every xdist worker) appends to its own
`parts/<worker>.jsonl`, so no state is shared between processes; the controller merges
the parts into `results.json`, written to a temporary file and renamed into place.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCHEMA_VERSION = 1
STATUSES = ("passed", "failed", "crashed", "unsupported", "known_defect", "error")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp creates 0600; reports are published (CI artifacts, web servers), so give
        # the file the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def new_run_id(device: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{device.replace(':', '')}-{os.getpid()}"


def point_latest(report_root: Path, run_dir: Path) -> None:
    """reports/latest -> the newest run, replaced atomically."""
    link = report_root / "latest"
    tmp = report_root / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)


def append_part(run_dir: Path, worker: str, record: dict) -> None:
    parts = run_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    with open(parts / f"{worker}.jsonl", "a") as f:
        f.write(json.dumps(record, default=_jsonable) + "\n")


def _jsonable(o):
    if isinstance(o, float):
        return repr(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def read_parts(run_dir: Path) -> list[dict]:
    records = []
    for part in sorted((run_dir / "parts").glob("*.jsonl")):
        for line in part.read_text().splitlines():
            if line.strip():
                records.append(json.loads(line))
    records.sort(key=lambda r: r.get("nodeid", ""))
    return records


def environment(device: str) -> dict:
    """Where and how the run happened; recorded in results.json and shown by the report.

    Every field is best effort: a missing fact is recorded as null (or an *_error field),
    because the environment block must never sink a run."""
    env: dict = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "infini_device": device,
        "device_name": _device_name(device),
        "command_line": shlex.join(sys.argv),
        "infini_root_env": os.environ.get("INFINI_ROOT"),
        "infinicore_version": None,
        "backend": None,
        "library_sha256": {},
    }
    try:
        from infinilm_models.runtime.build import LIBRARIES, read_stamp, sha256_file
        from infinilm_models.runtime.library import find_root

        root = find_root()
        env["infini_root"] = str(root)
        stamp = read_stamp(root)
        env["infinicore_build"] = stamp
        if stamp:
            env["infinicore_version"] = stamp.get("infinicore_version")
            env["backend"] = stamp.get("backend")
        # Hashes identify the exact binaries, also for a vendor's own build without a stamp.
        env["library_sha256"] = {lib: sha256_file(root / "lib" / lib) for lib in LIBRARIES
                                 if (root / "lib" / lib).is_file()}
    except Exception as e:  # noqa: BLE001 - the environment block must never sink a run
        env["infini_root_error"] = str(e)
    if env["backend"] is None:
        env["backend"] = device.split(":")[0]
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


def _device_name(device: str) -> str | None:
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


def summarize(records: list[dict]) -> dict[str, int]:
    counts = {s: 0 for s in STATUSES}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts


def write_results(run_dir: Path, run_id: str, device: str, started: float,
                  exit_status: int, extra: dict) -> Path:
    records = read_parts(run_dir)
    counts = summarize(records)
    verdict = "pass" if counts["failed"] + counts["crashed"] + counts["error"] == 0 and records \
        else "fail"
    doc = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "verdict": verdict,
        "counts": counts,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 2),
        "pytest_exit_status": exit_status,
        "environment": environment(device),
        **extra,
        "results": records,
    }
    out = run_dir / "results.json"
    atomic_write_text(out, json.dumps(doc, indent=1, default=_jsonable) + "\n")
    return out
