"""Per-layer activations on identical inputs: embeddings; per layer the attention output,
the residual after it, the MLP output and the hidden state; the final norm. A failure
names the first layer and sub-module that diverges and the ops it runs."""

from __future__ import annotations

from conformance.judge import get_calibrated

from .checks import compare_activations
from .conftest import prompt_ids
from .harness import OPS_OF, hf_capture, our_capture


def test_model_activations(model_name, model_path, dtype, runtimes, verify, tolerances):
    golden_m, ref_m, ours_m = runtimes
    batch, seq = (1, 16) if model_name == "smollm2" else (2, 13)
    ids = prompt_ids(model_path, batch, seq)
    golden, _ = hf_capture(golden_m, ids)
    ref = golden if ref_m is golden_m else hf_capture(ref_m, ids)[0]
    ours = our_capture(ours_m, ids)
    cal = get_calibrated(tolerances, "model_activations", dtype)
    gate = get_calibrated(tolerances, "model_activations_gate", dtype)
    rows, first, breach = compare_activations(ours, ref, golden, cal,
                                              ours_m.config.num_hidden_layers, gate)
    # The ops and the sentence go into the record so the report needs no model knowledge.
    where = {**first.__dict__, "ops": OPS_OF[first.submodule],
             "description": first.describe()} if first else None
    verify.info.update(batch=batch, seq=seq, per_tensor=rows, tolerance=cal.__dict__,
                       gate=gate.__dict__, first_divergence=where)
    assert breach is None, (f"{breach.describe()} (failure threshold); "
                            f"{first.describe()} (localization threshold)")
