"""Inner runs of the suite for the self-tests: a child pytest (as CI or a vendor runs it) on
the CPU, serial, with its own report directory; and what the self-tests read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The CPU build's known defect case (a known_defect cell) is left out: these runs are
# meant to show passed and failed cells only.
FAST_OPS = ("conformance/ops/test_op_elementwise.py", "conformance/ops/test_op_rms_norm.py",
            "-k", "not strided_last_dim_1")
# Real checks failing for real: a zero tolerance on rms_norm f32, and a localization bound
# of zero on the activations so their first divergence is recorded (the gate still passes).
STRICT_TOLERANCES = """
[rms_norm]
f32 = { atol = 0.0, rtol = 0.0, nmse = 0.0 }

[model_activations]
f32 = { k = 0.0, floor = 0.0 }
"""
# A model path that is also markup: the report must show it as text.
HOSTILE_DIR = ("<script>alert(1)<", "script>")


def inner_run(report_dir: Path, *args: str, expect: tuple[int, ...] = (0, 1)) -> Path:
    """Run the suite on `args` in a child pytest; return its run directory."""
    before = set(report_dir.glob("2*")) if report_dir.is_dir() else set()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
         "-q",
         "--infini-device", "cpu", f"--report-dir={report_dir}", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode in expect, \
        f"inner pytest exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    new = sorted(set(report_dir.glob("2*")) - before)
    assert len(new) == 1, f"expected one new run directory in {report_dir}, got {new}"
    return new[0]


OPS = "conformance/ops/test_op_{}.py"
MODEL = "conformance/model/test_model_{}.py"


def suite(tmp_path: Path, plant: str | None, *args: str,
          env: dict | None = None) -> tuple[int, dict, Path]:
    """Run the suite in a child pytest; (exit status, results.json, run directory).
    `env`: variables added to the child's environment."""
    reports = tmp_path / "reports"
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    # Serial unless a case says otherwise: the outer run already keeps every core busy, and
    # an inner xdist run would start two more interpreters to share them. Hypothesis's
    # plugin (2 s of imports) has nothing to do in an inner run.
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p",
           "no:hypothesispytest", "-q", "--infini-device", "cpu", f"--report-dir={reports}"]
    if "-n" not in args and "no:xdist" not in args:
        cmd += ["-p", "no:xdist"]
    if plant:
        cmd += ["-p", "conformance.selftest.plants", "--plant", plant]
    proc = subprocess.run(cmd + list(args), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    run = (reports / "latest").resolve()
    assert (run / "results.json").is_file(), f"no results.json:\n{proc.stdout[-3000:]}\n" \
                                             f"{proc.stderr[-3000:]}"
    return proc.returncode, json.loads((run / "results.json").read_text()), run


def bad(doc: dict) -> list[dict]:
    return [r for r in doc["results"] if r["status"] in ("failed", "crashed", "error",
                                                         "not_run")]


def locs(doc: dict, check: str) -> list[dict]:
    return [loc for r in doc["results"] if r["check"] == check and r["status"] == "failed"
            for loc in r["localization"]]
