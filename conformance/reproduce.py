"""The full command that runs one check again as it ran: the same InfiniCore build
(INFINI_ROOT), device, dtype, model and sweep, from the same checkout.

A bare `pytest '<nodeid>'` reruns on the default device with whatever build discovery
finds (the CPU one), and a sweep case id means nothing under another --sweep-seed. The
context is taken once per run (`context`), kept in results.json's environment
(`reproduce`), and turned into a command per check (`command`) for the replay bundles'
READMEs, the tensor dumps and the report's cards.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

# Environment variables that change which code or which build a rerun gets.
ENV_KEPT = ("PYTHONPATH", "INFINILM_BACKEND")


def context(config) -> dict[str, Any]:
    """What every check of this run shares: where to run from, the interpreter, the build,
    the device and the options that change what a node id means."""
    from infinilm_models.runtime.capabilities import current_build

    try:
        root = str(current_build().root)
    except Exception:  # noqa: BLE001 - no build found: the rerun finds it the same way
        root = os.environ.get("INFINI_ROOT")
    options = ["--infini-device", str(config.getoption("--infini-device"))]
    tolerances = config.getoption("--tolerances")
    if tolerances is not None:
        options += ["--tolerances", str(Path(tolerances).resolve())]
    # the defect tables in force: each file given (stacked on the shipped one), in order
    for value in config.getoption("--known-defects") or []:
        options += ["--known-defects", str(Path(value).resolve())]
    if config.getoption("--no-shipped-defects"):
        options.append("--no-shipped-defects")
    return {"cwd": str(config.rootpath), "python": sys.executable,
            "env": {"INFINI_ROOT": root,
                    **{k: os.environ[k] for k in ENV_KEPT if os.environ.get(k)}},
            "options": options,
            "sweep": ["--sweep-seed", str(config.getoption("--sweep-seed")),
                      "--sweep-cases", str(config.getoption("--sweep-cases"))]}


def command(ctx: dict[str, Any] | None, nodeid: str, dtype: str | None = None,
            model: str | None = None) -> str:
    """One shell line: `cd <checkout> && INFINI_ROOT=... python -m pytest '<nodeid>'
    --infini-device ... --dtype ... [--model ...] [--sweep-seed ... --sweep-cases ...]`."""
    if not ctx:
        return f"python -m pytest {shlex.quote(nodeid)}"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in ctx["env"].items() if v)
    args = [ctx["python"], "-m", "pytest", nodeid, "-p", "no:xdist", *ctx["options"]]
    if dtype in ("f32", "f16", "bf16"):
        args += ["--dtype", dtype]
    if model:
        args += ["--model", model]
    if "_sweep[" in nodeid:
        args += ctx["sweep"]
    line = " ".join(shlex.quote(a) for a in args)
    return f"cd {shlex.quote(ctx['cwd'])} && " + (f"{env} " if env else "") + line
