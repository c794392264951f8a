"""Running xmake: finding it and the compilers a backend needs, the commands of a build,
and one step with its output kept in a log."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import BuildError, log

# What must be on PATH before xmake starts. The other vendors' compilers come from their
# SDKs, which the tree's xmake/<vendor>.lua finds from the environment (--print-config
# names the variables it reads).
BACKEND_TOOLS: dict[str, list[str]] = {"nvidia": ["c++", "nvcc"]}
_HINTS = {"c++": "apt-get install g++", "nvcc": "install the CUDA toolkit and put nvcc on PATH"}
_PROGRESS = re.compile(r"\[\s*(\d+)%\]")


def find_xmake() -> str:
    """xmake from PATH, else next to this interpreter (pip's `xmake-wheel` puts it there)."""
    found = shutil.which("xmake") or shutil.which("xmake", path=str(Path(sys.executable).parent))
    if not found:
        raise BuildError(
            "xmake not found on PATH nor next to " + sys.executable
            + ". Install it with: pip install xmake-wheel==3.0.0"
        )
    return found


def check_tools(backend: str) -> str:
    missing = [t for t in BACKEND_TOOLS.get(backend, ["c++"]) if shutil.which(t) is None]
    if missing:
        raise BuildError(
            f"backend {backend!r} needs {', '.join(missing)} on PATH: "
            + "; ".join(_HINTS.get(t, t) for t in missing)
        )
    return find_xmake()


def configure_command(xmake: str, flags: list[str]) -> list[str]:
    """`xmake f`: clean, answer yes, release mode, then the recipe's flags."""
    return [xmake, "f", "-c", "-y", "-m", "release", *flags]


def run_step(cmd: list[str], cwd: Path, env: dict[str, str], step: str, log_file: Path) -> None:
    """Run a build step, echoing xmake's percentage lines and keeping the full log."""
    log(f"{step}: {' '.join(cmd)}")
    with open(log_file, "a") as logf:
        logf.write(f"\n$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        assert proc.stdout is not None
        last = -1
        tail: list[str] = []
        for line in proc.stdout:
            logf.write(line)
            plain = re.sub(r"\x1b\[[0-9;]*m", "", line.rstrip())
            tail = (tail + [plain])[-40:]
            m = _PROGRESS.search(plain)
            # One line per 10% keeps CI logs short; the full output is in the log file.
            if m and int(m.group(1)) // 10 != last:
                last = int(m.group(1)) // 10
                print(f"  {plain.strip()}", flush=True)
        rc = proc.wait()
    if rc != 0:
        raise BuildError(f"{step} failed (exit {rc}); full log: {log_file}\n" + "\n".join(tail))
