"""A context as long as the checkpoint allows, with the model's defaults: a prefill of
n tokens, then cached decode steps, against transformers' DynamicCache on the same
tokens. n is the checkpoint's limit (its max_position_embeddings) minus the steps, at most
8,000 on a GPU (SmolLM2: 8,000 of its 8,192); on a CPU, reduced: 512 (and 2,100 for a
checkpoint without a limit, dynamic RoPE, past the 2,048 positions that were once every
model's default cache). f16 and bf16 on the CPU are left to GPU runs (InfiniCore 0.1.0's
CPU half-precision gemm is 11x slower than its f32 one), recorded as such.

The logits of the prefill's last token and of every decode step are judged together,
calibrated (model_logits) like every model check. A cache longer than the model holds is
refused at new_cache, in one line (tests/test_long_context.py)."""

from __future__ import annotations

import numpy as np

from .faithful import alternative
from .harness import our_model
from .prompts import prompt_ids
from .reference import Reference, cached

STEPS = 4  # decode steps after the prefill


def context_length(config, device_type: str) -> int:
    """8,000 on a GPU, at most the checkpoint's limit; on a CPU 2,100 where the config sets
    no limit (past 2,048) and 512 where it does (the tiny fixtures' 1,024 cost minutes in
    the CI's 2-core run, measured 2026-12-07)."""
    limit = config.position_limit
    if device_type == "cpu":
        return (2100 if limit is None else min(limit, 512)) - STEPS
    return (8000 if limit is None else min(limit, 8000)) - STEPS


@cached
def hf_long_context(ref: Reference, ids: np.ndarray, prefix: int) -> np.ndarray:
    """transformers: the prefill's last-token logits, then one per decode step through a
    DynamicCache: [batch, 1 + steps, vocab] float64."""
    import torch
    from transformers import DynamicCache

    model, cache, out = ref.model, DynamicCache(), []
    with torch.inference_mode():
        t = torch.tensor(ids, device=model.device)
        for a, b in [(0, prefix)] + [(i, i + 1) for i in range(prefix, ids.shape[1] - 1)]:
            logits = model(t[:, a:b], past_key_values=cache, use_cache=True).logits
            out.append(logits[:, -1].to("cpu", torch.float64).numpy())
    return np.stack(out, axis=1)


def test_model_long_context(model_name, model_path, dtype, runtimes, verify, infini_device):
    golden_m, ref_m, ours = runtimes
    n = context_length(ours.config, infini_device.type)
    total = n + STEPS
    if total > ours.max_cache_len:  # no limit in the config: as long as asked for
        ours = our_model(str(model_path), dtype, str(infini_device), max_cache_len=total)
    ids = prompt_ids(model_path, 1, total, verify)
    verify.param(context=n, steps=STEPS, max_cache_len=ours.max_cache_len)
    cache = ours.new_cache(1, total)
    mine = [ours.forward(ids[:, :n], cache=cache).numpy()[:, -1].astype(np.float64)]
    for i in range(n, total - 1):
        mine.append(ours.forward(ids[:, i:i + 1], cache=cache).numpy()[:, -1]
                    .astype(np.float64))
    ours_logits = np.stack(mine, axis=1)
    golden = hf_long_context(golden_m, ids, n)
    ref = golden if ref_m is golden_m else hf_long_context(ref_m, ids, n)
    alt_m = alternative(ref_m)  # f16/bf16: the bound is on the spread of correct ones
    verify.finite("logits", ours_logits)
    verify.calibrated(ours_logits, ref, golden, "model_logits", dtype,
                      f"logits at positions {n - 1}..{total - 2} (prefill of {n}, "
                      f"{STEPS - 1} cached steps)",
                      alternative=hf_long_context(alt_m, ids, n) if alt_m is not None else None)
