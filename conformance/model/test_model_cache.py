"""Cached decoding vs a full recompute of the same prefix, both ours, calibrated against
transformers' own discrepancy between the same two computations in the same dtype; and
cached logits against transformers' cached decoding."""

from __future__ import annotations

import numpy as np

from conformance.judge import nmse

from .checks import compare_capture
from .faithful import alternative
from .harness import hf_decode, our_capture, points_of
from .prompts import CACHE_PREFIX as PREFIX
from .prompts import CACHE_STEPS as STEPS
from .prompts import prompt_ids
from .reference import Reference, cached


@cached
def hf_steps(ref: Reference, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """transformers with a DynamicCache (prefill PREFIX, then one token per step) and the
    full recompute of each prefix: last-token logits [batch, STEPS, vocab] of both."""
    import torch
    from transformers import DynamicCache

    model = ref.model
    cache = DynamicCache()
    cached, full = [], []
    with torch.inference_mode():
        t = torch.tensor(ids, device=model.device)
        model(t[:, :PREFIX], past_key_values=cache, use_cache=True)
        for i in range(PREFIX, PREFIX + STEPS):
            r = model(t[:, i:i + 1], past_key_values=cache, use_cache=True)
            cached.append(r.logits[:, -1].to("cpu", torch.float64).numpy())
            full.append(model(t[:, :i + 1]).logits[:, -1].to("cpu", torch.float64).numpy())
    return np.stack(cached, axis=1), np.stack(full, axis=1)


def test_model_cache(model_name, model_path, dtype, runtimes, verify, tolerances):
    golden_m, ref_m, ours_m = runtimes
    batch = 1 if model_name == "smollm2" else 2
    ids = prompt_ids(model_path, batch, PREFIX + STEPS, verify)

    cache = ours_m.new_cache(batch, PREFIX + STEPS)
    ours_m.forward(ids[:, :PREFIX], cache=cache)
    cached = np.stack([ours_m.forward(ids[:, i:i + 1], cache=cache).numpy()[:, 0]
                       .astype(np.float64) for i in range(PREFIX, PREFIX + STEPS)], axis=1)
    verify.require(verify.exact(cache.length, PREFIX + STEPS, "cache length"))
    recompute = np.stack([ours_m.forward(ids[:, : i + 1]).numpy()[:, 0].astype(np.float64)
                          for i in range(PREFIX, PREFIX + STEPS)], axis=1)
    golden, _ = hf_steps(golden_m, ids)
    ref_cached, ref_full = (golden, golden) if ref_m is golden_m else hf_steps(ref_m, ids)
    # The two computations differ only in how rows are batched (M = 1 against M = N gemms)
    # and in rounding order. What that may cost is transformers' own difference between
    # the same two computations, or, where its two paths happen to round identically (as
    # on the CPU), its error in this dtype: two results that are each as accurate as
    # transformers' may differ from each other by that much.
    # In f16/bf16 the faithful-rounding alternative's same two numbers widen it to the
    # spread of correct implementations (faithful.py).
    mine = nmse(cached, recompute)
    theirs = max(nmse(ref_cached, ref_full), nmse(ref_cached, golden))
    alt_m = alternative(ref_m)
    alt_cached, alt_full = hf_steps(alt_m, ids) if alt_m is not None else (None, None)
    alt = max(nmse(alt_cached, alt_full), nmse(alt_cached, golden)) if alt_m else None
    verify.calibrated_value("cached vs recompute (ours)", mine, theirs, "cache_vs_recompute",
                            dtype, "nmse", alternative=alt)
    verify.calibrated(cached, ref_cached, golden, "model_logits", dtype,
                      "cached logits vs transformers' cached decoding", alternative=alt_cached)
    verify.measure("cached vs recompute (NMSE)", {"nmse": mine}, {"nmse": theirs},
                   "reference: transformers' same two computations, or its error in the dtype")
    if any(c.counts_against for c in verify.comparisons):
        _localize_in_cache(verify, tolerances, dtype, golden_m, ref_m, ours_m, cache, ids)


def _localize_in_cache(verify, tolerances, dtype, golden_m, ref_m, ours_m, cache, ids) -> None:
    """Where a failing cached decode goes wrong: each layer's K/V cache after the steps,
    against transformers' DynamicCache after the same steps (calibrated per layer, as
    test_model_decode judges them), accumulated and isolated (the same decoding with every
    sub-module fed the golden's input, so that a layer named says whether the wrong cache
    starts there or arrives from earlier layers); the first layer out of bound is named."""
    points = [p for p in points_of(ours_m) if p.cache]
    steps = hf_decode(golden_m, None if ref_m is golden_m else ref_m, ids, PREFIX)
    alt_m = alternative(ref_m)
    alt = hf_decode(golden_m, alt_m, ids, PREFIX)[-1] if alt_m is not None else {}
    iso_cache = ours_m.new_cache(ids.shape[0], PREFIX + STEPS)
    for i, theirs in enumerate(steps):
        chunk = ids[:, :PREFIX] if i == 0 else ids[:, PREFIX + i - 1:PREFIX + i]
        ours_iso = our_capture(ours_m, chunk, cache=iso_cache, inject=theirs["golden"])
    ours = {}
    for i in range(ours_m.config.num_hidden_layers):
        for kind, t in (("key", cache.keys[i]), ("value", cache.values[i])):
            ours[f"layers.{i}.{kind}_cache"] = t.narrow(2, 0, cache.length).numpy().astype(
                np.float64)
    last = steps[-1]
    found = compare_capture(
        points, ours=ours, ref=last["ref"], golden=last["golden"], ours_iso=ours_iso,
        ref_iso=last["ref_iso"], cal=tolerances.calibrated("model_activations", dtype),
        gate=tolerances.calibrated("model_activations", dtype), phase="decode",
        context="KV cache after cached decoding", alt=alt.get("ref"), alt_iso=alt.get("ref_iso"))
    verify.localization.extend(found.localizations)
