"""What the parallel check compares (conformance/model/test_model_parallel.py, whose
docstring states the bounds): a parallel model against the unsharded run of ours and
against transformers, each rank's KV cache, and cached greedy decoding. A plain module:
the check and the planted-sharding self-tests both call `judge_parallel`."""

from __future__ import annotations

import numpy as np

from conformance.judge import token_nmse

from .checks import compare_capture
from .faithful import alternative
from .harness import hf_forward, our_capture, points_of

DECODE = 6


def judge_parallel(verify, tolerances, dtype: str, par, ours_m, golden_m, ref_m,
                   ids: np.ndarray) -> None:
    """Everything the check compares; the self-tests call it on planted sharding bugs."""
    same = ref_m is golden_m
    golden = hf_forward(golden_m, ids)
    ref = golden if same else hf_forward(ref_m, ids)
    alt_m = alternative(ref_m)  # f16/bf16: bounds on the spread of correct implementations
    alt = hf_forward(alt_m, ids) if alt_m is not None else None
    base_cache = ours_m.new_cache(ids.shape[0], ids.shape[1] + DECODE)
    base = our_capture(ours_m, ids, cache=base_cache)
    par_cache = par.new_cache(ids.shape[0], ids.shape[1] + DECODE)
    cap: dict = {}
    logits = par.forward(ids, cache=par_cache, all_logits=True, capture=cap).numpy()
    mine = {k: v.astype(np.float64) for k, v in cap.items()}
    mine["logits"] = logits.astype(np.float64)

    # 1. against the unsharded run of ours
    ref_err = token_nmse(ref["logits"], golden["logits"]) if not same else 0.0
    alt_err = token_nmse(alt["logits"], golden["logits"]) if alt is not None else None
    verify.calibrated_value("logits vs the unsharded model",
                            token_nmse(mine["logits"], base["logits"]), ref_err,
                            "parallel_vs_unsharded", dtype, "nmse", alternative=alt_err)
    # 2. per layer against transformers: the first layer out of bound is named
    points = [p for p in points_of(ours_m) if not p.cache]
    found = compare_capture(
        points, ours=mine, ref=ref, golden=golden, ours_iso=None, ref_iso=None,
        cal=tolerances.calibrated("model_activations", dtype),
        gate=tolerances.calibrated("model_activations_gate", dtype), phase="prefill", alt=alt)
    for c in found.comparisons:
        verify.keep(c)
    verify.localization.extend(found.localizations)
    verify.calibrated(mine["logits"], ref["logits"], golden["logits"], "model_logits", dtype,
                      "logits vs transformers",
                      alternative=alt["logits"] if alt is not None else None)
    # 3. each rank's KV cache against the heads it holds in the unsharded cache
    bad = rank_caches(par, par_cache, base, dtype, tolerances, ref_err, alt_err)
    verify.keep(bad)
    # 4. cached greedy decoding, both ours: identical tokens up to a near tie
    decode(verify, dtype, par, par_cache, ours_m, base_cache, ids)


def rank_caches(par, par_cache, base: dict, dtype: str, tolerances, ref_err: float,
                alt_err: float | None = None):
    """The first (rank, layer) whose K or V differs from the unsharded cache's heads."""
    from conformance.judge import calibrated_series

    labels, errs, refs = [], [], []
    for r, (rank, cache) in enumerate(zip(par.ranks, par_cache.caches)):
        shape = par.shapes[r % par.tp]
        for i, layer in enumerate(rank.model.layers):
            g = layer.name_index
            for kind, held in (("key", cache.keys[i]), ("value", cache.values[i])):
                mine = held.narrow(2, 0, cache.length).numpy().astype(np.float64)
                want = base[f"layers.{g}.{kind}_cache"][:, shape.kv_heads[0]:shape.kv_heads[1]]
                labels.append(f"rank {r} layers.{g}.{kind}_cache")
                errs.append(token_nmse(mine, want))
                refs.append(ref_err)
    c, _ = calibrated_series("KV cache per rank vs the unsharded cache's heads", labels, errs,
                             refs, tolerances.calibrated("parallel_vs_unsharded", dtype),
                             alternative=None if alt_err is None else [alt_err] * len(refs))
    return c


def decode(verify, dtype: str, par, par_cache, ours_m, base_cache, ids: np.ndarray) -> None:
    """Greedy decoding from the prefilled caches: the same tokens (f32), or a first
    divergence at a near tie of the unsharded logits (f16/bf16)."""
    batch = ids.shape[0]
    want, got = ids[:, -1:], ids[:, -1:]
    wants, gots, logits = [], [], []
    for step in range(DECODE - 1):
        lb = ours_m.forward(want, cache=base_cache).numpy().reshape(batch, -1)
        lp = par.forward(got, cache=par_cache).numpy().reshape(batch, -1)
        verify.finite(f"decode step {step}: parallel logits", lp)
        want, got = lb.argmax(-1)[:, None], lp.argmax(-1)[:, None]
        wants.append(want[:, 0])
        gots.append(got[:, 0])
        logits.append(lb.astype(np.float64))
        if (want != got).any():  # each side continues its own tokens: stop at the split
            break
    verify.greedy_tokens(np.stack(gots, 1), np.stack(wants, 1), np.stack(logits, 1), dtype,
                         "greedy decoding vs the unsharded model",
                         sides=("parallel layout", "unsharded model"))
