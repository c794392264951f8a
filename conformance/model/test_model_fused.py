"""The fused path against the plain one: the same checkpoint on the same build, with the
fused ops the build exports (add_rms_norm, embedding, silu_and_mul, kv_caching: fusion.py)
and without (the op sequence of InfiniCore 0.1.0).

The plain path is the reference here, and the golden (transformers) the yardstick: every
captured tensor of a prefill, accumulated and isolated, must be within the calibrated bound
k x (plain vs golden) + floor, the logits too, and the same for the logits of cached
decoding; greedy tokens must agree up to a near tie. A fused op that computes wrong
therefore fails here with its layer and sub-module named (the checks against
transformers, run on the fused model as every user gets it, name it too). `unsupported`
on a build that exports none of the fused ops (InfiniCore 0.1.0)."""

from __future__ import annotations

import numpy as np

from .checks import compare_capture
from .harness import hf_decode, hf_forward, our_capture, our_model, points_of
from .prompts import prompt_ids

PREFIX, STEPS, NEW = 5, 3, 8


def test_model_fused(model_name, model_path, dtype, runtimes, verify, tolerances,
                     infini_device):
    golden_m, _, fused = runtimes
    if not fused.fused.names:
        verify.unsupported(RuntimeError(
            "no fused op exported by this build: the model runs the plain op sequence"))
    plain = our_model(str(model_path), dtype, str(infini_device), fused="plain")
    verify.param(fused=",".join(fused.fused.names))
    batch, seq = (1, 16) if model_name == "smollm2" else (2, 13)
    ids = prompt_ids(model_path, batch, seq, verify)
    cal = tolerances.calibrated("model_activations", dtype)
    gate = tolerances.calibrated("model_activations_gate", dtype)

    # prefill: every capture point, accumulated and isolated, and the cache it wrote
    golden = hf_forward(golden_m, ids, with_cache=True)
    runs = {}
    for name, m in (("fused", fused), ("plain", plain)):
        runs[name] = our_capture(m, ids, cache=m.new_cache(batch, seq))
        runs[f"{name}_iso"] = our_capture(m, ids, cache=m.new_cache(batch, seq), inject=golden)
    verify.param(batch=batch, seq=seq)
    verify.capture(compare_capture(
        points_of(fused), ours=runs["fused"], ref=runs["plain"], golden=golden,
        ours_iso=runs["fused_iso"], ref_iso=runs["plain_iso"], cal=cal, gate=gate,
        phase="prefill"))
    verify.calibrated(runs["fused"]["logits"], runs["plain"]["logits"], golden["logits"],
                      "model_logits", dtype, "prefill logits: fused vs golden, bound by plain")

    # cached decoding: the logits of each step (the fused cache append, the device gather)
    dec_ids = prompt_ids(model_path, batch, PREFIX + STEPS, verify)
    theirs = hf_decode(golden_m, None, dec_ids, PREFIX)
    steps = {}
    for name, m in (("fused", fused), ("plain", plain)):
        cache = m.new_cache(batch, PREFIX + STEPS)
        m.forward(dec_ids[:, :PREFIX], cache=cache)
        steps[name] = np.concatenate(
            [m.forward(dec_ids[:, i:i + 1], cache=cache).numpy().astype(np.float64)
             for i in range(PREFIX, PREFIX + STEPS)], axis=1)
    want = np.concatenate([t["golden"]["logits"] for t in theirs[1:]], axis=1)
    verify.calibrated(steps["fused"], steps["plain"], want, "model_logits", dtype,
                      f"cached decode logits ({STEPS} steps): fused vs golden, bound by plain")

    # greedy generation (the fixed-shape step where the backend has graphs)
    from infinilm_models import generate

    outs = {name: generate(m, ids[:1, :7], max_new_tokens=NEW, eos_token_ids=(),
                           return_logits=True) for name, m in (("fused", fused),
                                                               ("plain", plain))}
    verify.greedy_tokens(outs["fused"].tokens, outs["plain"].tokens,
                         np.stack(outs["plain"].logits, axis=1), dtype,
                         "greedy tokens: fused vs plain", sides=("fused path", "plain path"))
