"""Give a tox environment the GPU runner's own CUDA torch, wherever it is installed.

`system_site_packages = true` exposes the *base* interpreter's site-packages only: where
the runner's torch lives in a virtualenv (on the lent H200 image `python3` is
/opt/torch/.venv/bin/python3), the tox env cannot see it and pip resolves `torch>=2.4`
from the index instead (a different torch, often without the CUDA the machine has).

So tox.ini's GPU envs install through this script (`install_command`):

    python tools/tox_torch.py install {opts} {packages}

It asks the interpreter named by $INFINILM_TORCH_PYTHON (default: `python3` on PATH,
outside this env) where its torch is, refuses a torch without CUDA or of another Python
version, writes a .pth file into this env's site-packages naming that directory, then runs
`python -m pip install ...`: pip sees torch (and whatever else lives there) as installed,
like system site packages, and the env's own installs still come first on sys.path.

    python tools/tox_torch.py report

prints the torch and CUDA this env runs with and fails unless they are the runner's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ENV_VAR = "INFINILM_TORCH_PYTHON"
PTH_NAME = "_infinilm_runner_torch.pth"

_PROBE = """
import json, os, sys
info = {"python": sys.executable, "version": list(sys.version_info[:2])}
try:
    import torch
except Exception as exc:
    info["error"] = f"{type(exc).__name__}: {exc}"
else:
    info.update(torch=torch.__version__, cuda=torch.version.cuda, file=torch.__file__,
                site=os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__))))
print(json.dumps(info))
"""


class Refusal(Exception):
    """Why this env cannot use the runner's torch; printed as `error: ...`, exit 1."""


def _runner_python() -> str:
    """$INFINILM_TORCH_PYTHON, else `python3` on PATH minus this env's own bin dir (tox
    puts it first, and its python3 is the env itself)."""
    name = os.environ.get(ENV_VAR) or "python3"
    if os.sep in name:
        return name
    own = {Path(sys.prefix, "bin").resolve(), Path(sys.executable).parent.resolve()}
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and Path(p).resolve() not in own)
    found = shutil.which(name, path=path)
    if found is None:
        raise Refusal(f"no {name!r} on PATH outside this env; set {ENV_VAR} to the "
                      "interpreter that imports the runner's CUDA torch")
    return found


def runner_torch() -> dict:
    """What the runner's interpreter says about its torch; Refusal unless it has CUDA."""
    python = _runner_python()
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True,
                              timeout=300, check=False)
    except OSError as exc:
        raise Refusal(f"cannot run {python} ({ENV_VAR}): {exc}") from exc
    if done.returncode != 0 or not done.stdout.strip():
        raise Refusal(f"{python} failed to report its torch: {done.stderr.strip()[-500:]}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    where = f"{info['python']} (set {ENV_VAR} to choose another interpreter)"
    if "error" in info:
        raise Refusal(f"{where} cannot import torch: {info['error']}")
    if not info.get("cuda"):
        raise Refusal(f"{where} imports torch {info['torch']} from {info['file']}, built "
                      "without CUDA (torch.version.cuda is None)")
    if tuple(info["version"]) != sys.version_info[:2]:
        raise Refusal(f"{where} is Python {'.'.join(map(str, info['version']))}, this env "
                      f"is {sys.version_info[0]}.{sys.version_info[1]}: its torch cannot be "
                      f"imported here; create the env from it (tox uses {ENV_VAR} as "
                      "basepython)")
    return info


def link(site_packages: Path | None = None) -> dict:
    """Write the .pth naming the runner's torch directory into this env's site-packages."""
    info = runner_torch()
    target = Path(site_packages or sysconfig.get_paths()["purelib"])
    target.mkdir(parents=True, exist_ok=True)
    # addsitedir, not a bare path line: the .pth files of that directory are processed
    # too, as they are for system site packages.
    line = f"import site; site.addsitedir({info['site']!r})\n"
    (target / PTH_NAME).write_text(line, encoding="utf-8")
    return info


def report() -> None:
    """Print the torch this env imports; Refusal unless it is the runner's CUDA torch."""
    info = runner_torch()
    import torch

    here = Path(torch.__file__).resolve()
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) from {here}; runner: "
          f"{info['python']} -> torch {info['torch']} (CUDA {info['cuda']})")
    if not here.is_relative_to(Path(info["site"]).resolve()):
        raise Refusal(f"this env imports torch from {here}, not the runner's from "
                      f"{info['site']}: pip installed another one (remove .tox and retry)")
    if not torch.version.cuda:
        raise Refusal(f"torch {torch.__version__} at {here} has no CUDA")


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["install"]:
            info = link()
            print(f"tox_torch: runner torch {info['torch']} (CUDA {info['cuda']}) from "
                  f"{info['site']}", file=sys.stderr)
            return subprocess.call([sys.executable, "-I", "-m", "pip", "install", *argv[1:]])
        if argv[:1] == ["link"] and len(argv) <= 2:
            info = link(Path(argv[1]) if len(argv) == 2 else None)
            print(json.dumps(info))
            return 0
        if argv == ["report"]:
            report()
            return 0
    except Refusal as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("usage: tox_torch.py install PIP-ARGS... | link [SITE-PACKAGES] | report",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
