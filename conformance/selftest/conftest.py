"""Real conformance runs for the report self-tests: each fixture runs a few fast checks of
the suite in an inner pytest process (as CI would) and hands back its run directory, so
the report, compare and merge are tested on results the plugin actually recorded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAST_OPS = ("conformance/ops/test_op_elementwise.py", "conformance/ops/test_op_rms_norm.py")
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
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         "--infini-device", "cpu", f"--report-dir={report_dir}", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode in expect, \
        f"inner pytest exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    new = sorted(set(report_dir.glob("2*")) - before)
    assert len(new) == 1, f"expected one new run directory in {report_dir}, got {new}"
    return new[0]


@pytest.fixture(scope="session")
def op_runs(tmp_path_factory) -> dict[str, Path]:
    """f32 and bf16 runs of the same op checks, and an f32 run whose rms_norm fails."""
    base = tmp_path_factory.mktemp("op-runs")
    strict = base / "strict.toml"
    strict.write_text(STRICT_TOLERANCES)
    return {
        "f32": inner_run(base / "reports", *FAST_OPS, "--dtype", "f32", expect=(0,)),
        "bf16": inner_run(base / "reports", *FAST_OPS, "--dtype", "bf16", expect=(0,)),
        "f32_strict": inner_run(base / "reports", *FAST_OPS, "--dtype", "f32",
                                f"--tolerances={strict}", expect=(1,)),
    }


@pytest.fixture(scope="session")
def report_run(tmp_path_factory) -> Path:
    """A small mixed run rendered by the plugin: op checks (rms_norm failing for real) and
    the activation check of a tiny model living under a directory named like markup."""
    from infinilm_fixtures.tiny import ensure

    base = tmp_path_factory.mktemp("report-run")
    model = base.joinpath(*HOSTILE_DIR)
    shutil.copytree(ensure("mha"), model)
    strict = base / "strict.toml"
    strict.write_text(STRICT_TOLERANCES)
    return inner_run(base / "reports", *FAST_OPS, "conformance/model/test_model_activations.py",
                     "--dtype", "f32", f"--model={model}", f"--tolerances={strict}",
                     expect=(1,))
