"""The suite against planted backends (conformance/selftest/plants.py): each defect class
fails with the op named at op level and the layer, sub-module and phase named at model
level; each correct-but-different implementation passes; a backend that segfaults in the
middle of a serial or an xdist run still gets a complete record and report.

Every case is a real inner run of the suite (as CI or a vendor runs it) with one InfiniCore
op wrapped; the assertions read the results.json it wrote."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .runs import MODEL, OPS, ROOT, bad, locs, suite

# -- a segfaulting kernel -------------------------------------------------------------------


@pytest.mark.parametrize("mode", [["-p", "no:xdist"], ["-n", "2"]], ids=["serial", "xdist"])
def test_segfaulting_gemm_leaves_a_complete_record(tmp_path, mode):
    status, doc, run = suite(tmp_path, "gemm_segfault_batched", OPS.format("gemm"),
                             OPS.format("rms_norm"), "--dtype", "f32", *mode)
    assert status == 1
    assert doc["planned"] == len(doc["results"]) > 30 and doc["counts"]["not_run"] == 0
    crashed = [r for r in doc["results"] if r["status"] == "crashed"]
    assert len(crashed) >= 4, [r["nodeid"] for r in crashed]
    for r in crashed:
        assert r["dtype"] == "f32" and r["op"] == "gemm", r
        assert r["crash"]["op"] == "gemm", r["crash"]["traceback"]
        assert r["crash"]["signal"] == "SIGSEGV"
        assert r["crash"]["op"] == "gemm" and r["crash"]["last_call"].startswith("infiniopGemm")
        assert r["bundle"] and (run / r["bundle"] / "calls.json").is_file()
    # everything after the crashes ran and passed
    rms = [r for r in doc["results"] if r["check"] == "op_rms_norm"]
    assert rms and all(r["status"] == "passed" for r in rms)
    assert (run / "index.html").is_file() and (run / "junit.xml").is_file()


def test_replay_bundle_of_a_failing_op(tmp_path):
    """A failing op check leaves a bundle whose replay, against the same build, fails the
    same way; the command is the one the bundle's README gives."""
    _, doc, run = suite(tmp_path, "rms_eps100", OPS.format("rms_norm"), "--dtype", "f32",
                        "-k", "decode", "-p", "no:xdist")
    failed = [r for r in doc["results"] if r["status"] == "failed"]
    assert failed and all(r["bundle"] for r in failed)
    bundle = run / failed[0]["bundle"]
    assert "python -m conformance.replay" in (bundle / "README.txt").read_text()
    proc = subprocess.run([sys.executable, "-m", "conformance.replay", str(bundle)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    # The recorded calls are replayed as they were made (the plant writes its output back
    # with a rearrange, which is recorded too), so the failure reproduces.
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "infiniopRMSNorm" in proc.stdout and "FAIL" in proc.stdout


# -- correct but different ------------------------------------------------------------------

CORRECT_OPS = [OPS.format(o) for o in ("gemm", "elementwise", "rms_norm", "causal_softmax",
                                        "rope", "swiglu")]
CORRECT_MODEL = [MODEL.format(c) for c in ("activations", "decode", "cache")]


@pytest.mark.parametrize("plant", ["ulp_noise", "gemm_jitter", "host_gemm", "subnormal_mask"])
def test_correct_but_different_backends_pass(tmp_path, plant):
    # beta0_ignores_nan_output is the CPU build's known f32 defect (C read when beta = 0):
    # host_gemm does not have it, so its strict entry would rightly report an XPASS.
    _, doc, _ = suite(tmp_path, plant, *CORRECT_OPS, *CORRECT_MODEL, "--dtype", "f32,bf16",
                      "--model", "tiny-gqa", "-k", "not bs2 and not beta0")
    failures = bad(doc)
    if plant == "ulp_noise":
        # IEEE mandates correct rounding of add/mul: 1 ulp off fails that property (and only
        # that), reported as the property it is.
        for r in failures:
            assert r["test"] == "test_op_elementwise_rounding", r["nodeid"]
            assert all(c["kind"] == "property" for c in r["comparisons"] if not c["passed"])
        failures = []
    assert not failures, [(r["nodeid"], r["message"][:200]) for r in failures]
    findings = [c["what"] for r in doc["results"] for c in r["comparisons"]
                if c["kind"] == "finding" and not c["passed"]]
    if plant == "gemm_jitter":
        assert "deterministic across calls" in findings
    if plant == "subnormal_mask":
        assert any("exactly 0" in f for f in findings)



# -- half precision: the spread of correct implementations (tolerances.toml, model level) --

TINY_ALL = ",".join(f"tiny-{n}" for n in ("mha", "gqa", "mqa", "tied", "untied", "headdim",
                                          "llama3rope", "odd", "sharded"))
# Every half-precision model check of the CPU run (fused: unsupported on 0.1.0).
EVERY_MODEL = ["conformance/model"]
# A backend that rounds its half-precision gemms otherwise is correct: 25%/50% of the
# products rounded the other way (faithfully), or 25%/50% of the outputs (the fused
# residual sums too) nudged one ulp with random sign.
HALF_ROUNDING = ["gemm_half_other25", "gemm_half_other50", "gemm_half_ulp25",
                 "gemm_half_ulp50"]
# SmolLM2 in bf16 on the CPU takes 4 to 9 minutes an inner run (0.1.0's half-precision gemm
# is a plain loop): these run when asked for (INFINILM_SLOW_SELFTESTS=1), and the default
# (CI) run records them `unsupported` with the reason, as the CPU run does SmolLM2's
# longest model cases (plugin/narrowing.py).
SLOW = pytest.mark.skipif(not os.environ.get("INFINILM_SLOW_SELFTESTS"),
                          reason="unsupported: left out of the default run: a SmolLM2 bf16 "
                                 "inner run takes 4-9 min on 2 CPU cores (set "
                                 "INFINILM_SLOW_SELFTESTS=1 to run it)")


# The 50% backends on every tiny fixture; the 25% ones (a subset of their roundings) on the
# four whose checks came closest to a bound under them (tolerances.toml's measurements).
ROUNDING_CASES = [(p, TINY_ALL if p.endswith("50") else "tiny-mha,tiny-tied,tiny-odd,tiny-sharded")
                  for p in HALF_ROUNDING]


@pytest.mark.parametrize("plant,models", ROUNDING_CASES, ids=HALF_ROUNDING)
def test_half_precision_gemm_rounding_differently_passes_every_model_check(tmp_path, plant,
                                                                            models):
    """Every model check of the tiny fixtures passes in bf16 with gemms that round
    otherwise: the bounds are k x the spread of correct implementations (transformers and
    its faithful-rounding alternative, model/faithful.py), not of transformers alone (with
    which 25% of the outputs nudged failed SmolLM2's isolated layer 13 attention)."""
    _, doc, _ = suite(tmp_path, plant, *EVERY_MODEL, "--model", models, "--dtype", "bf16")
    assert len([r for r in doc["results"] if r["status"] == "passed"]) >= \
        13 * len(models.split(","))
    assert not bad(doc), [(r["nodeid"], r["message"][:200]) for r in bad(doc)]


@SLOW
@pytest.mark.parametrize("plant", HALF_ROUNDING)
def test_half_precision_gemm_rounding_differently_passes_smollm2(tmp_path, plant):
    _, doc, _ = suite(tmp_path, plant, *EVERY_MODEL, "--model", "smollm2", "--dtype", "bf16")
    assert len([r for r in doc["results"] if r["status"] == "passed"]) >= 9
    assert not bad(doc), [(r["nodeid"], r["message"][:200]) for r in bad(doc)]


def _first_isolated(doc: dict, check: str) -> dict:
    found = locs(doc, check)
    assert found, f"{check} did not fail"
    return found[0]


@pytest.mark.parametrize("model", ["tiny-gqa,tiny-tied", pytest.param("smollm2", marks=SLOW)])
def test_a_harmful_norm_defect_is_caught_in_bf16(tmp_path, model):
    """Every RMSNorm 2% too large: each bf16 activations and decode check fails, naming
    layer 0's first sub-module after the norm as where it starts (its isolated
    comparison out of bound), with rms_norm among the ops to look at."""
    status, doc, _ = suite(tmp_path, "rms_norm_scale2", MODEL.format("activations"),
                           MODEL.format("decode"), "--model", model, "--dtype", "bf16")
    assert status == 1
    assert doc["results"] and all(r["status"] == "failed" for r in doc["results"]), \
        [(r["nodeid"], r["status"]) for r in doc["results"]]
    first = _first_isolated(doc, "model_activations")
    assert (first["layer"], first["origin"]) == (0, "starts here"), first["description"]
    assert "rms_norm" in first["ops"]


def _isolated(record: dict) -> dict[tuple[str, str], dict]:
    return {(t["phase"], t["tensor"]): t["isolated"] for t in record["tensors"]
            if t["isolated"]}


def test_a_100x_rms_norm_epsilon_below_what_bf16_resolves_is_caught_in_f32(tmp_path):
    """RMSNorm with 100x its epsilon on tiny-sharded (the tiny fixture it moves most): the
    f32 activations check fails at layer 0; in bf16 it passes, and its record shows why:
    the defect's own effect on every isolated sub-module (the f32 NMSE, float32 rounding
    being ~1e-12) is below that sub-module's bf16 bound, the smallest defect bf16 resolves
    there; the report prints that resolution."""
    _, doc, run = suite(tmp_path, "rms_eps100", MODEL.format("activations"), "--model",
                        "tiny-sharded", "--dtype", "f32,bf16")
    by_dtype = {r["dtype"]: r for r in doc["results"]}
    assert by_dtype["f32"]["status"] == "failed"
    first = _first_isolated(doc, "model_activations")
    assert (first["layer"], first["origin"]) == (0, "starts here"), first["description"]
    assert by_dtype["bf16"]["status"] == "passed", by_dtype["bf16"]["message"]
    effect, resolved = _isolated(by_dtype["f32"]), _isolated(by_dtype["bf16"])
    assert effect.keys() == resolved.keys() and effect
    assert max(effect[k]["nmse"] for k in effect) > 1e-5  # a real effect, not f32 noise
    for key, e in effect.items():
        assert e["nmse"] < resolved[key]["threshold"], (key, e, resolved[key])
    assert "smallest defect resolved in bf16" in (run / "index.html").read_text()


@SLOW
def test_a_100x_rms_norm_epsilon_is_caught_in_bf16_on_smollm2(tmp_path):
    """On SmolLM2 (small embeddings: the epsilon matters at layer 0) the bf16 activations
    check fails too, naming layer 0 (its K cache, the first tensor after the norm)."""
    status, doc, _ = suite(tmp_path, "rms_eps100", MODEL.format("activations"), "--model",
                           "smollm2", "--dtype", "f32,bf16")
    assert status == 1
    assert all(r["status"] == "failed" for r in doc["results"]), \
        [(r["nodeid"], r["status"]) for r in doc["results"]]
    for r in doc["results"]:
        first = r["localization"][0]
        assert (first["layer"], first["origin"]) == (0, "starts here"), first["description"]


# -- defects --------------------------------------------------------------------------------

DEFECTS = {
    # plant: (suite args, op named at op level, dtypes that must catch it,
    #         model-level (check, phase, layer, submodule) or None)
    "add_tail16": ([OPS.format("elementwise"), MODEL.format("activations"), "--model",
                    "tiny-odd"], "add", ("f32", "bf16"),
                   ("model_activations", "prefill", 0, "attention residual")),
    "sampler_no_last": ([OPS.format("random_sample")], "random_sample", ("f32", "bf16"), None),
    "rms_eps100": ([OPS.format("rms_norm")], "rms_norm", ("f32", "bf16"), None),
    # A wrong k/v projection or RoPE of k: the K/V the layer writes to its cache are the
    # first wrong tensors (the cache is written before the layer attends over it).
    "gemm_m1_scale": ([OPS.format("gemm"), MODEL.format("decode"), MODEL.format("activations"),
                       "--model", "tiny-gqa"], "gemm", ("f32", "bf16"),
                      ("model_decode", "decode", 0, "kv cache")),
    "rope_decode_pos0": ([OPS.format("rope"), MODEL.format("decode"),
                          MODEL.format("activations"), "--model", "tiny-gqa"], "rope",
                         ("f32", "bf16"), ("model_decode", "decode", 0, "kv cache")),
    "softmax_drop_newest": ([OPS.format("causal_softmax"), MODEL.format("decode"),
                             MODEL.format("activations"), "--model", "tiny-gqa"],
                            "causal_softmax", ("f32", "bf16"),
                            ("model_decode", "decode", 0, "attention")),
}


@pytest.mark.parametrize("plant", list(DEFECTS))
def test_planted_defect_is_caught_and_localized(tmp_path, plant):
    args, op, dtypes, model = DEFECTS[plant]
    status, doc, _ = suite(tmp_path, plant, *args, "--dtype", ",".join(dtypes))
    assert status == 1
    for dtype in dtypes:
        op_failures = [r for r in doc["results"] if r["op"] == op and r["dtype"] == dtype
                       and r["status"] == "failed"]
        assert op_failures, f"{plant}: no {op} check failed in {dtype}"
    others = [r for r in bad(doc) if r["op"] not in (None, op)]
    assert not others, [r["nodeid"] for r in others]
    if model is None:
        return
    check, phase, layer, submodule = model
    found = locs(doc, check)
    assert found, f"{plant}: {check} did not fail"
    first = found[0]
    assert (first["phase"], first["layer"], first["submodule"]) == (phase, layer, submodule), \
        first["description"]
    if phase == "decode":  # a decode-only defect: the prefill check cannot see it
        prefill = [r for r in doc["results"] if r["check"] == "model_activations"]
        assert prefill and all(r["status"] == "passed" for r in prefill)


def test_nan_is_localized_where_it_appears(tmp_path):
    """A NaN in layer 1's attention output: every model check fails (generation included),
    and the localization names layer 1 attention, not an earlier deviation."""
    # bf16: on the CPU build an f32 gemm with beta = 0 reads its output buffer (known
    # defect cpu-gemm-f32-beta0-reads-c), so the NaN left in a reused buffer would poison
    # the next forward's layer 0 as well.
    status, doc, _ = suite(tmp_path, "nan_layer1_attention", MODEL.format("activations"),
                           MODEL.format("generation"), MODEL.format("logits"), "--model",
                           "tiny-sharded", "--dtype", "bf16")
    assert status == 1
    assert all(r["status"] == "failed" for r in doc["results"]), \
        [(r["nodeid"], r["status"]) for r in doc["results"]]
    first = locs(doc, "model_activations")[0]
    assert (first["layer"], first["submodule"]) == (1, "attention"), first["description"]
    assert "non-finite" in first["description"]


def test_a_decode_only_defect_is_named_by_the_cache_check_too(tmp_path):
    """test_model_cache (a check a vendor runs first) names the first layer whose K/V cache
    diverges when cached decoding goes wrong, not just 'the logits are off'."""
    status, doc, _ = suite(tmp_path, "rope_decode_pos0", MODEL.format("cache"), "--model",
                           "tiny-gqa", "--dtype", "f32")
    assert status == 1
    first = locs(doc, "model_cache")[0]
    assert (first["phase"], first["layer"], first["submodule"]) == (
        "decode", 0, "kv cache"), first["description"]


def test_a_nan_is_named_at_its_real_layer_not_where_a_stale_buffer_repeats_it(tmp_path):
    """A NaN written by the 7th rms_norm call of the process: layer 3's input norm in the
    first (accumulated) forward. On the 0.1.0 CPU build an f32 gemm with beta = 0 reads its
    output buffer, so the isolated forward that follows inherits the NaN from a reused
    buffer as early as layer 0; the localization must still name layer 3 (it named layer 0
    on SmolLM2), at the first point the norm's output reaches: the K/V it writes to the
    cache, with rms_norm among the ops to look at."""
    status, doc, _ = suite(tmp_path, "nan_rms_norm_7th", MODEL.format("activations"),
                           "--model", "tiny-sharded", "--dtype", "f32")
    assert status == 1
    first = locs(doc, "model_activations")[0]
    assert (first["layer"], first["submodule"]) == (3, "kv cache"), first["description"]
    assert "non-finite" in first["description"] and "rms_norm" in first["description"]


def test_checkpoint_with_a_nan_weight_is_an_error_naming_the_tensor(tmp_path):
    """A poisoned checkpoint: ours refuses it at load (naming the file and tensor), so
    every model check of it is an error; none passes, generation included."""
    import shutil

    import numpy as np
    from safetensors.numpy import load_file, save_file

    from infinilm_fixtures.tiny import ensure

    model = tmp_path / "poisoned"
    shutil.copytree(ensure("gqa"), model)
    weights = load_file(str(model / "model.safetensors"))
    weights["model.layers.1.mlp.down_proj.weight"][0, 0] = np.nan
    save_file(weights, str(model / "model.safetensors"))
    _, doc, run = suite(tmp_path, None, MODEL.format("generation"), MODEL.format("logits"),
                        "--model", str(model), "--dtype", "f32")
    assert doc["results"] and all(r["status"] == "error" for r in doc["results"])
    assert all("model.layers.1.mlp.down_proj.weight" in r["message"] for r in doc["results"])
    assert (run / "index.html").is_file()


# -- every check starts clean, every check can fail ------------------------------------------

CLEAN_MODEL = [MODEL.format(c) for c in ("activations", "logits", "decode", "cache",
                                           "generation")]


@pytest.mark.parametrize("mode", [["-p", "no:xdist"], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_call_corrupted_once_fails_exactly_the_check_that_made_it(tmp_path, mode):
    """The 7th rms_norm call of each process writes one NaN. Exactly the check that made
    that call fails (one per process that runs checks); every later check of the same
    model, whose buffers the NaN passed through, starts clean and passes."""
    log = tmp_path / "plant.log"
    status, doc, _ = suite(tmp_path, "nan_rms_norm_7th", *CLEAN_MODEL, "--model", "tiny-gqa",
                           "--dtype", "f32", *mode, env={"INFINILM_PLANT_LOG": str(log)})
    assert status == 1
    made = {line.split(" ", 2)[1] for line in log.read_text().splitlines()}
    failed = {r["nodeid"] for r in bad(doc)}
    assert made and failed == made, (sorted(made), sorted(failed))
    assert len(doc["results"]) == 8 and len(failed) <= 2


def test_an_output_part_left_unwritten_fails_every_check_of_its_shape(tmp_path):
    """A gemm that never writes the last row of a multi-row output: every check whose
    forward has such a gemm fails, the first and every later one (each starts from zeroed
    buffers, not from the right values an earlier check of the same prompt left there)."""
    # (perplexity reads no logits of the last position, the row this gemm skips: not here)
    status, doc, _ = suite(tmp_path, "gemm_last_row_unwritten", MODEL.format("activations"),
                           MODEL.format("logits"), MODEL.format("decode"), "--model",
                           "tiny-gqa", "--dtype", "f32")
    assert status == 1
    assert len(doc["results"]) == 6
    assert all(r["status"] == "failed" for r in doc["results"]), \
        [(r["nodeid"], r["status"]) for r in doc["results"]]


def test_a_replay_that_computes_nothing_fails_the_graph_check(tmp_path):
    """The fixed decode step does nothing after its first step: it has buffers of its own
    (cleared before each step), so it cannot return the logits the plain step just wrote."""
    status, doc, _ = suite(tmp_path, "noop_replay", MODEL.format("graph"), "--model",
                           "tiny-gqa", "--dtype", "f32")
    assert status == 1
    assert len(doc["results"]) == 2 and all(r["status"] == "failed" for r in doc["results"])
    assert all("logits of every step vs the plain path" in r["message"]
               for r in doc["results"]), [r["message"][:300] for r in doc["results"]]


def test_a_defect_only_past_256_keys_is_caught_by_the_default_run(tmp_path):
    """A decode softmax that sees only the newest 256 keys: the default op checks fail it
    (their long-cache cases are there whatever the sweep seed draws), in every dtype,
    and every shorter case passes, the model checks too."""
    status, doc, _ = suite(tmp_path, "softmax_long_decode", OPS.format("causal_softmax"),
                           MODEL.format("decode"), MODEL.format("activations"), "--model",
                           "tiny-gqa")
    assert status == 1
    failed = bad(doc)
    assert {r["dtype"] for r in failed} == {"f32", "f16", "bf16"}
    for r in failed:
        assert r["op"] == "causal_softmax", r["nodeid"]
        shape = r["setup"].get("x") or r["setup"].get("shape", "")
        assert any(str(n) in str(shape) or f"_{n}" in r["nodeid"]
                   for n in (300, 511, 700, 2049, 2100, 3000)), (r["nodeid"], shape)
    # (known_defect: 0.1.0's f16 truncation, in its envelope, as without the plant)
    assert all(r["status"] in ("passed", "known_defect") for r in doc["results"]
               if r["model"] is not None)


def test_a_defect_past_position_256_fails_only_the_long_sequence_checks(tmp_path, monkeypatch):
    """A KV cache that writes the tokens from position 256 on one slot early: every model
    check of the fixture that stays below position 256 passes; the two that go past it
    fail: long context (a 512-token prefill on the CPU, then cached steps) and long
    horizon, which names the first step past the boundary, position 256, in layer 0's KV
    cache computing wrong on the golden's input (the cache is captured before the attention
    that reads it). f32: in half precision the one displaced slot of a random tiny model
    stays below the rounding budget (tolerances.toml: such defects are f32's to catch)."""
    # one thread: the outer run keeps the cores busy (two threads of a serial inner run
    # each wait for a core at every OpenMP region)
    monkeypatch.setenv("INFINILM_THREADS", "1")
    status, doc, _ = suite(tmp_path, "cache_slot_past_256", "conformance/model", "--model",
                           "tiny-qwen2", "--dtype", "f32")
    assert status == 1
    long_checks = ("model_long_horizon", "model_long_context")
    for check in long_checks:
        long = [r for r in doc["results"] if r["check"] == check]
        assert len(long) == 1 and long[0]["status"] == "failed", long
    others = [r for r in doc["results"] if r["check"] not in long_checks]
    wrong = bad({"results": others})
    assert len(others) >= 15 and not wrong, [(r["nodeid"], r["status"]) for r in wrong]
    first = locs(doc, "model_long_horizon")[0]
    assert (first["phase"], first["step"], first["layer"], first["submodule"],
            first["isolated"]) == ("decode", 256, 0, "kv cache", True), first["description"]
