"""The bring-up tools in real inner runs of the suite (as a vendor runs them): the stages
stopping at a planted broken op, --dump-tensors of a planted model defect, a failing op
check's bundle (its infiniop-test case and its full commands), the reproduce command
rerunning the same check on the same build and device, and the support probe.

Planted backends: conformance/selftest/plants.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
OPS = "conformance/ops/test_op_{}.py"
MODEL = "conformance/model/test_model_{}.py"


def run(tmp_path: Path, *args: str, plant: str | None = None, env: dict | None = None
        ) -> tuple[int, dict, Path, str]:
    """A serial inner pytest; (exit status, results.json, run directory, output)."""
    reports = tmp_path / "reports"
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), **(env or {})}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p",
           "no:hypothesispytest", "-p", "no:xdist", "-q", "--infini-device", "cpu",
           f"--report-dir={reports}"]
    if plant:
        cmd += ["-p", "conformance.selftest.plants", "--plant", plant]
    proc = subprocess.run(cmd + list(args), cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=900)
    out = proc.stdout + proc.stderr
    run_dir = (reports / "latest").resolve()
    assert (run_dir / "results.json").is_file(), out[-4000:]
    return proc.returncode, json.loads((run_dir / "results.json").read_text()), run_dir, out


def by_status(doc: dict, status: str) -> list[dict]:
    return [r for r in doc["results"] if r["status"] == status]


# -- stages ---------------------------------------------------------------------------------


def test_stages_stop_after_the_stage_with_a_planted_broken_op(tmp_path):
    """rms_norm with 100 x epsilon: every op check runs (the model file is named first on
    the command line), the op stage fails, and the model checks are recorded not_run,
    naming the stage and its first failure."""
    status, doc, _, out = run(tmp_path, MODEL.format("logits"), OPS.format("rms_norm"),
                              OPS.format("swiglu"), "--model", "tiny-gqa", "--dtype", "f32",
                              "-k", "not sweep", "--stages", plant="rms_eps100")
    assert status == 1
    ops = [r for r in doc["results"] if r["check"].startswith("op_")]
    assert ops and all(r["status"] != "not_run" for r in ops)
    failed = by_status(doc, "failed")
    assert failed and {r["op"] for r in failed} == {"rms_norm"}
    model = [r for r in doc["results"] if r["check"] == "model_logits"]
    assert model and all(r["status"] == "not_run" for r in model)
    for r in model:
        assert "stage 'ops' failed" in r["not_run_reason"], r["not_run_reason"]
        assert "test_op_rms_norm" in r["not_run_reason"]
    assert "stage 'ops' failed" in out and "<- stopped here" in out


def test_stages_with_x_stop_at_the_first_broken_op(tmp_path):
    """-x under --stages: the first failure is an op check, not the model check that the
    command line names first; every other check is recorded not_run, naming the stage."""
    status, doc, _, _ = run(tmp_path, MODEL.format("logits"), OPS.format("rms_norm"),
                            "--model", "tiny-gqa", "--dtype", "f32", "-k", "not sweep",
                            "--stages", "-x", plant="rms_eps100")
    assert status == 1
    failed = by_status(doc, "failed")
    assert len(failed) == 1 and failed[0]["check"] == "op_rms_norm"
    rest = by_status(doc, "not_run")
    assert any(r["check"] == "model_logits" for r in rest)
    assert all("in stage 'ops'" in r["not_run_reason"] for r in rest)
    assert len(rest) + len(failed) + len(by_status(doc, "passed")) == doc["planned"]


def test_stage_markers_select_by_stage(tmp_path):
    """No test file declares a stage: `-m layer` selects the per-layer checks alone."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
         "-m", "layer", "conformance/model", "conformance/ops/test_op_rms_norm.py",
         "--model", "tiny-gqa", "--dtype", "f32"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert ids, proc.stdout[-2000:] + proc.stderr[-2000:]
    checks = {Path(i.split("::")[0]).stem for i in ids}
    assert checks == {"test_model_activations", "test_model_decode", "test_model_fused",
                      "test_model_golden"}, checks


# -- tensors of a failing model check ------------------------------------------------------


def test_dump_tensors_of_a_planted_model_defect(tmp_path):
    """A NaN in layer 1's attention output: the dump holds every capture point of layer 1
    and its input (layer 0's output) on every side; ours is NaN where the golden and the
    reference are finite, and layer 0 is still right. A passing check dumps nothing."""
    target = tmp_path / "dump"
    status, doc, _, _ = run(tmp_path, MODEL.format("activations"), MODEL.format("golden"),
                            "--model", "tiny-gqa", "--dtype", "f32",
                            f"--dump-tensors={target}", plant="nan_layer1_attention")
    assert status == 1
    failed = by_status(doc, "failed")
    assert [r["check"] for r in failed] == ["model_activations"]
    folders = list(target.iterdir())
    assert len(folders) == 1
    index = json.loads((folders[0] / "index.json").read_text())
    assert index["nodeid"] == failed[0]["nodeid"]
    assert index["localization"]["layer"] == 1
    assert index["localization"]["tensor"] == "layers.1.self_attn"
    points = [p["point"] for p in index["points"]]
    assert points[0] == "layers.0" and "layers.1.self_attn" in points and \
        "layers.1.mlp" in points and points[-1] == "layers.1"
    assert all(p.startswith("layers.1") for p in points[1:])
    assert set(index["sides"]) == {"ours", "golden", "reference", "ours_isolated",
                                   "reference_isolated"}
    t = np.load(folders[0] / "tensors.npz")
    assert set(t.files) == {f"{s}/{p}" for s in index["sides"] for p in points}
    assert np.isnan(t["ours/layers.1.self_attn"]).any()
    assert np.isfinite(t["golden/layers.1.self_attn"]).all()
    assert np.isfinite(t["reference/layers.1.self_attn"]).all()
    np.testing.assert_allclose(t["ours/layers.0"], t["golden/layers.0"], rtol=1e-4, atol=1e-5)
    assert t["ours/layers.1.mlp"].shape == t["golden/layers.1.mlp"].shape == (2, 13, 64)
    for part in (failed[0]["nodeid"], "--infini-device cpu", "--dtype f32",
                 "--model tiny-gqa", "INFINI_ROOT="):
        assert part in index["command"], (part, index["command"])
    assert index["command"] in (folders[0] / "README.txt").read_text()


# -- a failing op check: its bundle, its case file, its commands -------------------------


def test_failing_op_bundle_holds_an_infiniop_case_and_full_commands(tmp_path):
    from conformance.gguf_cases import read

    _, doc, run_dir, _ = run(tmp_path, OPS.format("rms_norm"), "--dtype", "f32",
                             "-k", "test_op_rms_norm and decode", plant="rms_eps100")
    failed = by_status(doc, "failed")
    assert len(failed) == 1 and failed[0]["bundle"]
    bundle = run_dir / failed[0]["bundle"]
    case = read(bundle / "infiniop-test.gguf")
    assert case["architecture"] == "infiniop-test" and case["test_count"] == 1
    c = case["cases"][0]
    assert c["op_name"] == "rms_norm" and c["attrs"]["source"] == failed[0]["nodeid"]
    assert c["attrs"]["epsilon"] == pytest.approx(1e-5)
    calls = json.loads((bundle / "calls.json").read_text())
    expected = np.load(bundle / "expected.npz")["e0"]
    np.testing.assert_array_equal(c["tensors"]["ans"]["data"], expected)
    assert c["tensors"]["y"]["data"].size == 0 and c["tensors"]["y"]["shape"] == [1, 576]
    # x as the check passed it: its buffer's values
    call = next(k for k in calls["calls"] if k["op"] == "RMSNorm")
    buf = np.load(bundle / "buffers.npz")[call["tensors"][1]["buffer"]]
    np.testing.assert_array_equal(c["tensors"]["x"]["data"].reshape(-1),
                                  np.frombuffer(buf.tobytes(), np.float32)[:576])
    readme = (bundle / "README.txt").read_text()
    root = doc["environment"]["infini_root"]
    assert f"INFINI_ROOT={root}" in readme and "--device cpu" in readme
    assert f"'{failed[0]['nodeid']}'" in readme and "--dtype f32" in readme
    assert f"infiniop-test {bundle / 'infiniop-test.gguf'} --cpu --atol" in readme


def test_reproduce_command_reruns_the_same_check_on_the_same_build(tmp_path):
    """The command kept in results.json reruns a sweep case on the same InfiniCore build
    and device from anywhere, whatever the environment's defaults say (another dtype
    list, sweep seed, device and no INFINI_ROOT would each lose the case)."""
    from conformance.reproduce import command

    first = tmp_path / "first"
    _, doc, _, _ = run(first, OPS.format("rms_norm"), "--dtype", "f16",
                       "-k", "sweep and s1")
    assert len(doc["results"]) == 1
    r = doc["results"][0]
    cmd = command(doc["environment"]["reproduce"], r["nodeid"], r["dtype"], r["model"])
    again = tmp_path / "again"
    hostile = {k: v for k, v in os.environ.items() if k != "INFINI_ROOT"}
    hostile.update(INFINILM_DTYPES="bf16", INFINILM_SWEEP_SEED="1", INFINILM_DEVICE="nvidia",
                   INFINILM_BACKEND="nvidia")
    proc = subprocess.run(["bash", "-c", f"{cmd} --report-dir={again}"], cwd=tmp_path,
                          env=hostile, capture_output=True, text=True, timeout=600)
    doc2 = json.loads((again / "latest" / "results.json").read_text())
    assert [x["nodeid"] for x in doc2["results"]] == [r["nodeid"]], proc.stdout[-3000:]
    r2 = doc2["results"][0]
    assert r2["status"] == r["status"] and r2["dtype"] == "f16"
    assert r2["comparisons"][0]["metrics"] == r["comparisons"][0]["metrics"]
    for key in ("infini_device", "infini_root"):
        assert doc2["environment"][key] == doc["environment"][key], key


# -- the support probe ----------------------------------------------------------------------


def test_support_probe_creates_descriptors_and_computes_nothing(tmp_path):
    """A batched gemm that segfaults when it computes is accepted by the probe (its
    descriptor is created, the kernel never runs); 0.1.0 refuses RoPE's 4-D layout with
    its status, and add_rms_norm is not exported. The matrix is in results.json, the
    report and support.md."""
    status, doc, run_dir, out = run(
        tmp_path, OPS.format("gemm"), OPS.format("rope"), OPS.format("add_rms_norm"),
        "--dtype", "f32", "--support", "-k", "not sweep", plant="gemm_segfault_batched")
    assert status == 0, out[-3000:]
    assert not by_status(doc, "crashed") and not by_status(doc, "failed")
    cells = {(c["op"], c["dtype"]): c for c in doc["support"]["cells"]}
    gemm = cells[("gemm", "f32")]
    assert gemm["state"] == "supported" and gemm["cases"] >= 15
    batched = [r for r in doc["results"] if r["check"] == "op_gemm" and "attn" in r["nodeid"]]
    assert batched and all(r["status"] == "passed" for r in batched)
    rope = cells[("rope", "f32")]
    assert rope["state"] in ("supported", "partial")
    if doc["environment"]["infinicore"]["key"] == "pypi:0.1.0":
        assert rope["state"] == "partial" and rope["statuses"] == ["BAD_TENSOR_SHAPE (11)"]
        assert "[" in rope["example"] and cells[("add_rms_norm", "f32")]["state"] == \
            "not_exported"
        assert any(r["status"] == "unsupported" and "BAD_TENSOR_SHAPE" in r["message"]
                   for r in doc["results"] if r["check"] == "op_rope")
    text = (run_dir / "support.md").read_text()
    assert "| op | f32 |" in text and "| gemm | ✅" in text
    assert 'id="support"' in (run_dir / "index.html").read_text()
    assert "support probe:" in out
