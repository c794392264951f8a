"""Per-layer activations of a prefill on identical inputs, accumulated (each layer on our
own previous output) and isolated (each sub-module on the golden run's own input), and
the KV cache the prefill wrote. A failure names the first layer and sub-module that
computes wrong, or where accumulated error grew past the gate, and the ops it runs. In
f16/bf16 the bounds are k x the spread of two correct implementations (transformers and
its faithful-rounding alternative, faithful.py)."""

from __future__ import annotations

from .checks import compare_capture
from .faithful import alternative
from .harness import hf_forward, our_capture, points_of
from .prompts import prompt_ids


def prefill_captures(golden_m, ref_m, ours_m, ids):
    """golden, ref, ours, ref isolated, ours isolated captures of one prefill (with caches)."""
    golden = hf_forward(golden_m, ids, with_cache=True)
    ref = golden if ref_m is golden_m else hf_forward(ref_m, ids, with_cache=True)
    ours = our_capture(ours_m, ids, cache=ours_m.new_cache(ids.shape[0], ids.shape[1]))
    ref_iso = golden if ref_m is golden_m else hf_forward(ref_m, ids, with_cache=True,
                                                          inject=golden)
    ours_iso = our_capture(ours_m, ids, cache=ours_m.new_cache(ids.shape[0], ids.shape[1]),
                           inject=golden)
    return golden, ref, ours, ref_iso, ours_iso


def alternative_captures(golden, ref_m, ids) -> dict:
    """The faithful-rounding alternative's captures of the same prefill, accumulated and
    isolated (compare_capture's alt, alt_iso); empty outside f16/bf16."""
    alt_m = alternative(ref_m)
    if alt_m is None:
        return {}
    return {"alt": hf_forward(alt_m, ids, with_cache=True),
            "alt_iso": hf_forward(alt_m, ids, with_cache=True, inject=golden)}


def test_model_activations(model_name, model_path, dtype, runtimes, verify, tolerances):
    golden_m, ref_m, ours_m = runtimes
    batch, seq = (1, 16) if model_name == "smollm2" else (2, 13)
    ids = prompt_ids(model_path, batch, seq, verify)
    golden, ref, ours, ref_iso, ours_iso = prefill_captures(golden_m, ref_m, ours_m, ids)
    verify.param(batch=batch, seq=seq)
    verify.capture(compare_capture(
        points_of(ours_m), ours=ours, ref=ref, golden=golden, ours_iso=ours_iso,
        ref_iso=ref_iso, cal=tolerances.calibrated("model_activations", dtype),
        gate=tolerances.calibrated("model_activations_gate", dtype), phase="prefill",
        **alternative_captures(golden, ref_m, ids)))
