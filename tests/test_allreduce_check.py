"""conformance/ops/test_op_allreduce.py run as CI runs it: on the CPU every case ends
`unsupported` (the CPU has no InfiniCCL backend), never passed and never silently skipped;
and its plumbing (inputs, references, in/out of place, the verdicts) checked end to end
with the loopback communicator standing in, which has the same interface."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK = "conformance/ops/test_op_allreduce.py"
LOOPBACK_PLUGIN = '''
from infinilm_models.runtime.comm import LoopbackCommunicator


def pytest_collection_modifyitems(items):
    from conformance.ops import collective

    comm = LoopbackCommunicator(2, "cpu")
    collective.communicator = lambda kind: comm
'''


def run_check(tmp_path: Path, *args: str, pythonpath: tuple[str, ...] = ()) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *pythonpath, *filter(None, [os.environ.get("PYTHONPATH")])])}
    reports = tmp_path / "reports"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
         "--infini-device", "cpu", f"--report-dir={reports}", CHECK, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = [p for p in reports.glob("2*") if p.is_dir()]
    return json.loads((run / "results.json").read_text())["results"]


def test_every_case_is_unsupported_on_cpu(tmp_path: Path) -> None:
    results = run_check(tmp_path, "--dtype", "f32,f16,bf16")
    assert len(results) == 5 * 4 * 2 * 3
    for r in results:
        assert r["status"] == "unsupported", r
        assert "infinicclCommInitAll" in r["message"], r
        assert "DEVICE_TYPE_NOT_SUPPORTED" in r["message"], r
        assert r["op"] == "allreduce"


def test_check_plumbing_with_the_loopback(tmp_path: Path) -> None:
    (tmp_path / "loopback_plugin.py").write_text(LOOPBACK_PLUGIN)
    results = run_check(tmp_path, "--dtype", "f32,bf16", "--isolate", "no",
                        "-p", "loopback_plugin", "-k", "sum or prod",
                        pythonpath=(str(tmp_path),))
    assert len(results) == 2 * 4 * 2 * 2
    for r in results:
        assert r["status"] == "passed", (r["nodeid"], r["message"])
        whats = [c["what"] for c in r["comparisons"]]
        expected = ["rank 0", "rank 1", "ranks agree"]
        if r["params"]["place"] == "out_of_place":
            expected = ["rank 0", "rank 0 input", "rank 1", "rank 1 input", "ranks agree"]
        assert whats == expected, (r["nodeid"], whats)
        assert r["setup"]["world_size"] == 2
