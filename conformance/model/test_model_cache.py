"""Cached decoding: the logits of each incremental step with the KV cache equal (ours) a
full recompute of the same prefix, and match transformers' own cached decoding."""

from __future__ import annotations

import numpy as np

from conformance.judge import error_metrics, get_calibrated

from .conftest import prompt_ids

PREFIX, STEPS = 6, 4


def hf_cached_steps(model, ids: np.ndarray) -> np.ndarray:
    """transformers with a DynamicCache: prefill PREFIX tokens, then one token per step."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache()
    out = []
    with torch.inference_mode():
        t = torch.tensor(ids, device=model.device)
        model(t[:, :PREFIX], past_key_values=cache, use_cache=True)
        for i in range(PREFIX, PREFIX + STEPS):
            r = model(t[:, i:i + 1], past_key_values=cache, use_cache=True)
            out.append(r.logits[:, -1].to("cpu", torch.float64).numpy())
    return np.stack(out, axis=1)


def test_model_cache(model_name, model_path, dtype, runtimes, verify, tolerances):
    golden_m, ref_m, ours_m = runtimes
    batch = 1 if model_name == "smollm2" else 2
    ids = prompt_ids(model_path, batch, PREFIX + STEPS)

    cache = ours_m.new_cache(batch, PREFIX + STEPS)
    ours_m.forward(ids[:, :PREFIX], cache=cache)
    cached = []
    for i in range(PREFIX, PREFIX + STEPS):
        cached.append(ours_m.forward(ids[:, i:i + 1], cache=cache).numpy()[:, 0]
                      .astype(np.float64))
    cached = np.stack(cached, axis=1)
    assert cache.length == PREFIX + STEPS
    recompute = np.stack([ours_m.forward(ids[:, : i + 1]).numpy()[:, 0].astype(np.float64)
                          for i in range(PREFIX, PREFIX + STEPS)], axis=1)
    verify.close(cached, recompute, "cache_vs_recompute", dtype, "cached vs recompute (ours)")

    golden = hf_cached_steps(golden_m, ids)
    ref = golden if ref_m is golden_m else hf_cached_steps(ref_m, ids)
    mine, theirs = error_metrics(cached, golden), error_metrics(ref, golden)
    cal = get_calibrated(tolerances, "model_logits", dtype)
    verify.info.update(vs_transformers_cached=mine, transformers_same_dtype=theirs)
    assert np.isfinite(cached).all(), "non-finite logits in cached decoding"
    assert mine["nmse"] <= cal.threshold(theirs["nmse"]), (
        f"cached decoding vs transformers' cached decoding: NMSE {mine['nmse']:.3g} > "
        f"{cal.threshold(theirs['nmse']):.3g} (transformers {dtype}: {theirs['nmse']:.3g})")
