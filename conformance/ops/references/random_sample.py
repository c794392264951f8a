"""random_sample's documented algorithm in float64, and logits that make it unambiguous:
sort descending, cumulate exp((l - max) / T), return the first token whose cumulative
mass reaches random_val * min(mass of the top-k, topp * total mass)."""

from __future__ import annotations

import numpy as np

from ..common import rng_for


def reference(logits: np.ndarray, random_val: float, topp: float, topk: int, temp: float) -> int:
    if topk <= 1 or topp <= 0:
        return int(np.argmax(logits))  # first maximal index, as InfiniCore's scan
    order = np.argsort(-logits, kind="stable")
    z = (logits[order] - logits[order[0]]) / temp
    cum = np.cumsum(np.exp(z))
    limit = random_val * min(cum[min(topk, len(cum)) - 1], topp * cum[-1])
    return int(order[np.searchsorted(cum, limit, side="left")])


def logits_for(vocab: int, dtype: str, seed) -> np.ndarray:
    """Distinct values exactly representable in every dtype (no ties, so the order is unique):
    a permutation of a grid with step 1/8 for small vocabularies; for a large vocabulary a
    single clear maximum over noise (greedy only needs the argmax to be unique)."""
    rng = rng_for("random_sample", seed)
    if vocab <= 256:
        return rng.permutation(np.arange(vocab) - vocab / 2).astype(np.float64) / 8.0
    x = np.round(rng.standard_normal(vocab) * 4) / 4
    x[rng.integers(vocab)] = 40.0
    return x


def sweep_logits(vocab: int, where: str, rng: np.random.Generator) -> np.ndarray:
    """Distinct values on a 1/8 grid (exact in every dtype) whose maximum sits at `where`;
    tie_*: two equal maxima, the first or the last index among them."""
    x = rng.permutation(np.arange(vocab) - vocab / 2).astype(np.float64) / 8.0
    top = x.max() + 1.0
    pos = {"first": 0, "last": vocab - 1, "middle": vocab // 2, "tie_first": 0,
           "tie_last": vocab - 1}[where]
    x[pos] = top
    if where.startswith("tie") and vocab > 1:
        other = vocab // 2 if where == "tie_first" else 0
        x[other] = top
    return x
