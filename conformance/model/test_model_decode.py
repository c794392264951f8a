"""Per-layer activations and KV cache in cached decoding, against transformers' own cached
decoding (DynamicCache), accumulated and isolated. A defect that only shows in decode (a
RoPE that ignores the position of a decode token, a softmax that drops the newest key, a
gemv that is off at M = 1) is named by layer and sub-module here, where full-sequence
checks cannot see it.

Each tensor is judged over all decode steps together (one token per row and step: a single
step's hidden state is a few dozen numbers on the tiny fixtures, too few for an error
statistic to be compared with transformers'); the localization names the step where the
first breaching tensor deviates most."""

from __future__ import annotations

import numpy as np
import pytest

from .checks import compare_capture
from .faithful import alternative
from .harness import hf_decode, our_capture, points_of
from .prompts import prompt_ids

PREFIX, STEPS = 5, 4


# Batch 1 decodes through M = 1 gemms (gemv), the common case; batch 2 through the
# batched layouts of the cache append and the attention.
@pytest.mark.parametrize("batch", [1, 2], ids=["bs1", "bs2"])
def test_model_decode(model_name, model_path, dtype, batch, runtimes, verify, tolerances):
    golden_m, ref_m, ours_m = runtimes
    steps = 2 if model_name == "smollm2" else STEPS
    ids = prompt_ids(model_path, batch, PREFIX + steps, verify)
    points = points_of(ours_m)
    # transformers' side of every step at once (computed once, reference.py); the prefill
    # builds all five caches (its activations are test_model_activations')
    hf = hf_decode(golden_m, None if ref_m is golden_m else ref_m, ids, PREFIX)
    alt_m = alternative(ref_m)  # f16/bf16: the faithful-rounding alternative's decoding
    if alt_m is not None:
        hf = [{**h, "alt": a["ref"], "alt_iso": a["ref_iso"]}
              for h, a in zip(hf, hf_decode(golden_m, alt_m, ids, PREFIX))]
    caches = {"ours": ours_m.new_cache(batch, PREFIX + steps),
              "ours_iso": ours_m.new_cache(batch, PREFIX + steps)}
    runs = []
    for i, theirs in enumerate(hf):
        chunk = ids[:, :PREFIX] if i == 0 else ids[:, PREFIX + i - 1:PREFIX + i]
        o = our_capture(ours_m, chunk, cache=caches["ours"])
        oi = our_capture(ours_m, chunk, cache=caches["ours_iso"], inject=theirs["golden"])
        runs.append({**theirs, "ours": o, "ours_iso": oi})
    cal = tolerances.calibrated("model_activations", dtype)
    gate = tolerances.calibrated("model_activations_gate", dtype)
    # The prefill that built the caches is judged too (its K/V are what decoding reads).
    first = runs[0]
    verify.capture(compare_capture(
        points, ours=first["ours"], ref=first["ref"], golden=first["golden"],
        ours_iso=first["ours_iso"], ref_iso=first["ref_iso"], cal=cal, gate=gate,
        phase="prefill", alt=first.get("alt"), alt_iso=first.get("alt_iso")))
    runs = runs[1:]
    pooled = {k: pool([r[k] for r in runs]) for k in runs[0]}
    verify.param(batch=batch, prefix=PREFIX, steps=steps)
    verify.capture(compare_capture(
        points, ours=pooled["ours"], ref=pooled["ref"], golden=pooled["golden"],
        ours_iso=pooled["ours_iso"], ref_iso=pooled["ref_iso"], cal=cal, gate=gate,
        phase="decode", steps=runs, alt=pooled.get("alt"), alt_iso=pooled.get("alt_iso")))
    verify.calibrated(pooled["ours"]["logits"], pooled["ref"]["logits"],
                      pooled["golden"]["logits"], "model_logits", dtype,
                      f"decode logits ({steps} steps)",
                      alternative=pooled["alt"]["logits"] if "alt" in pooled else None)


def pool(captures: list[dict]) -> dict:
    """Per name, the steps' tensors joined along the token axis; the KV caches as they are
    after the last step (they hold every step's keys)."""
    out = {}
    for name, last in captures[-1].items():
        out[name] = last if name.endswith("_cache") else \
            np.concatenate([c[name] for c in captures], axis=1)
    return out
