"""random_sample: greedy (argmax over SmolLM2's vocab) and top-k/top-p/temperature sampling
with a fixed random value, checked token-exact against the documented algorithm:
sort descending, cumulate exp((l - max) / T), return the first token whose cumulative
mass reaches random_val * min(mass of the top-k, topp * total mass)."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models.runtime import Tensor, ops

from .common import rng_for, to_device, unsupported_guard
from .references.random_sample import logits_for, reference, sweep_logits
from .shapes import VOCAB
from .sweep import describe

# name: (vocab, random_val, topp, topk, temperature); topk 1 (or topp 0) means argmax
CASES = {
    "greedy_vocab": (VOCAB, 0.0, 0.0, 1, 1.0),
    "greedy_odd_vocab": (331, 0.0, 0.0, 1, 1.0),
    "topk3_T0.5": (256, 0.8, 0.8, 3, 0.5),
    "topk5_topp0.9": (256, 0.05, 0.9, 5, 1.0),
    "topk10_T2": (256, 0.15, 0.85, 10, 2.0),
    "topp_only_bound": (256, 0.5, 0.3, 256, 1.0),
    "topk50_full_p": (256, 0.9, 1.0, 50, 1.0),
    # A pick deep in the tail (random_val near 1) is where a low-precision cumulative sum
    # drifts furthest from the float one. These two were found by a sweep on the H100 (see
    # known_defects.toml); the case name seeds the logits, so it is part of the case.
    "scan_k50_r0.99_0": (256, 0.99, 1.0, 50, 1.0),
    "scan_k100_r0.95_0": (256, 0.95, 1.0, 100, 1.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_op_random_sample(case, dtype, infini_device, verify):
    vocab, random_val, topp, topk, temp = CASES[case]
    logits = logits_for(vocab, dtype, (case, dtype))
    expected = reference(logits, random_val, topp, topk, temp)
    result = Tensor.empty((), "i32", infini_device)
    verify.param(vocab=vocab, random_val=random_val, topp=topp, topk=topk, temperature=temp)
    with unsupported_guard(verify):
        ops.random_sample(result, to_device(logits, infini_device, dtype), random_val, topp, topk,
                          temp)
    if topk <= 1 or topp <= 0:
        verify.argmax(int(result.numpy()), logits)
    else:
        verify.exact(int(result.numpy()), expected, "token id",
                     standard="integer output of the documented sampling algorithm")


def test_op_random_sample_distribution(infini_device, verify):
    """Sweeping random_val over [0, 1) visits exactly the top-k tokens, each with the
    probability mass the algorithm gives it (a shifted cumulative, not a coin flip)."""
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 3.0], dtype=np.float64)
    lt = to_device(logits, infini_device, "f32")
    result = Tensor.empty((), "i32", infini_device)
    seen = {}
    for r in np.linspace(0, 0.999, 200):
        ops.random_sample(result, lt, float(r), 1.0, 3, 1.0)
        tok = int(result.numpy())
        verify.exact(tok, reference(logits, float(r), 1.0, 3, 1.0), f"random_val {r:.3f}")
        seen[tok] = seen.get(tok, 0) + 1
    verify.measure("tokens seen (count per token id)", {str(k): v for k, v in seen.items()})
    verify.exact(sorted(seen), [0, 1, 5], "tokens visited (the top 3)")


def test_op_random_sample_sweep(sweep_case, dtype, infini_device, verify):
    """argmax with the maximum at the first, last and a middle index and at ties; sampling
    whose pick (by the documented algorithm) is the first, the last or a middle index."""
    p = sweep_case.params
    verify.param(**describe(sweep_case))
    rng = rng_for("random_sample-sweep", sweep_case.seed, sweep_case.name, dtype)
    vocab, where = p["vocab"], p["where"]
    result = Tensor.empty((), "i32", infini_device)
    if p["mode"] == "argmax":
        logits = sweep_logits(vocab, where, rng)
        with unsupported_guard(verify):
            ops.random_sample(result, to_device(logits, infini_device, dtype), 0.0, 0.0, 1, 1.0)
        verify.argmax(int(result.numpy()), logits)
        return
    # Sampling over the whole vocabulary (topk = vocab, topp = 1): pick the random value
    # that lands in the middle of the target token's slice of the cumulative mass. Logits
    # on a 1/128 grid in [0, 2) (exact in every dtype) give every token a slice far wider
    # than float32 rounding, the tail included (with a wide range the tail's mass would
    # vanish in float and no implementation could return it).
    logits = rng.permutation(np.arange(vocab)).astype(np.float64) * (2.0 / 128) % 2.0
    order = np.argsort(-logits, kind="stable")
    rank = {"first": 0, "last": vocab - 1, "middle": vocab // 2}[where]
    target = {"first": int(order[0]), "last": vocab - 1, "middle": int(order[rank])}[where]
    if where == "last":  # the smallest logit at the last index
        logits[[order[-1], vocab - 1]] = logits[[vocab - 1, order[-1]]]
        order = np.argsort(-logits, kind="stable")
    cum = np.cumsum(np.exp(logits[order] - logits[order[0]]))
    lo = cum[rank - 1] if rank else 0.0
    random_val = min(float((lo + cum[rank]) / 2 / cum[-1]), 1.0 - 2.0 ** -24)
    expected = reference(logits, random_val, 1.0, vocab, 1.0)
    verify.param(random_val=random_val, target=target)
    with unsupported_guard(verify):
        ops.random_sample(result, to_device(logits, infini_device, dtype), random_val, 1.0,
                          vocab, 1.0)
    verify.exact(int(result.numpy()), expected, "token id",
                 standard="integer output of the documented sampling algorithm")
