"""Per-layer activations and KV cache in cached decoding, step by step, against
transformers' own cached decoding (DynamicCache), accumulated and isolated. A defect
that only shows in decode (a RoPE that ignores the position of a decode token, a softmax
that drops the newest key, a gemv that is off at M = 1) is named by step, layer and
sub-module here, where full-sequence checks cannot see it."""

from __future__ import annotations

import pytest

from .checks import compare_capture
from .conftest import prompt_ids
from .harness import hf_capture, our_capture, points_of

PREFIX, STEPS = 5, 3


# Batch 1 decodes through M = 1 gemms (gemv), the common case; batch 2 through the
# batched layouts of the cache append and the attention.
@pytest.mark.parametrize("batch", [1, 2], ids=["bs1", "bs2"])
def test_model_decode(model_name, model_path, dtype, batch, runtimes, verify, tolerances):
    from transformers import DynamicCache

    golden_m, ref_m, ours_m = runtimes
    ids = prompt_ids(model_path, batch, PREFIX + STEPS, verify)
    points = points_of(ours_m)
    cal = tolerances.calibrated("model_activations", dtype)
    gate = tolerances.calibrated("model_activations_gate", dtype)
    same = ref_m is golden_m
    caches = {"golden": DynamicCache(), "ref": DynamicCache(), "ref_iso": DynamicCache(),
              "ours": ours_m.new_cache(batch, PREFIX + STEPS),
              "ours_iso": ours_m.new_cache(batch, PREFIX + STEPS)}

    def step(chunk):
        g = hf_capture(golden_m, chunk, cache=caches["golden"])
        r = g if same else hf_capture(ref_m, chunk, cache=caches["ref"])
        ri = g if same else hf_capture(ref_m, chunk, cache=caches["ref_iso"], inject=g)
        o = our_capture(ours_m, chunk, cache=caches["ours"])
        oi = our_capture(ours_m, chunk, cache=caches["ours_iso"], inject=g)
        return g, r, ri, o, oi

    step(ids[:, :PREFIX])  # the prefill builds all five caches (activations: see prefill)
    rows_all = []
    for s in range(STEPS):
        g, r, ri, o, oi = step(ids[:, PREFIX + s:PREFIX + s + 1])
        rows, comparisons, locs = compare_capture(
            points, ours=o, ref=r, golden=g, ours_iso=oi, ref_iso=ri, cal=cal, gate=gate,
            phase="decode", step=s + 1)
        rows_all += rows
        for c in comparisons:
            verify.keep(c)
        for loc in locs:
            verify.localize(loc)
        if locs:
            break  # the first decode step that breaks is where to look
        verify.calibrated(o["logits"][:, -1], r["logits"][:, -1], g["logits"][:, -1],
                          "model_logits", dtype, f"decode step {s + 1}: logits")
    verify.info.update(batch=batch, prefix=PREFIX, steps=STEPS, per_tensor=rows_all)
