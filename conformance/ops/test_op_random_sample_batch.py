"""random_sample_batch (infiniopRandomSampleBatch): one token per row of logits
[batch, vocab], each row with its own random_val, topp, topk and temperature, each checked
token-exact against the single-row algorithm (test_op_random_sample.reference, as upstream's
own batch test does it row by row: test/infiniop/random_sample.py, test_batch). Argmax rows
(topk 1 or topp 0) are right at any maximal index.

Rows differ in logits and in every parameter, so a kernel that applies one row's parameters
(or logits) to another, or drops one parameter, picks another token in some row.
"""

from __future__ import annotations

import numpy as np
import pytest

from conformance import judge
from infinilm_models.runtime import DType, Tensor, ops

from .common import rng_for, to_device, unsupported_guard
from .references.random_sample import logits_for, reference, sweep_logits
from .shapes import VOCAB
from .sweep import describe, generator

f32 = np.float32  # the parameters reach InfiniCore as float32; the reference gets the same


def is_argmax(topp: float, topk: int) -> bool:
    return topk <= 1 or topp <= 0


def run_batch(verify, device, logits: np.ndarray, dtype: str, rows: list[tuple]) -> np.ndarray:
    """rows: (random_val, topp, topk, temperature) per row -> the token ids."""
    rv, topp, topk, temp = (list(c) for c in zip(*rows))
    result = Tensor.empty((len(rows),), "i32", device)
    with unsupported_guard(verify):
        ops.random_sample_batch(result, to_device(logits, device, dtype), rv, topp, topk, temp)
    return result.numpy().astype(np.int64)


def judge_rows(verify, tokens: np.ndarray, logits: np.ndarray, rows: list[tuple]) -> None:
    """Each row against the single-row algorithm with that row's own parameters. When every
    row has one right answer (no tied maximum in an argmax row) that is one exact comparison
    of the whole output (which a replay bundle can judge); otherwise one per row, an argmax
    row right at any maximal index."""
    expected = []
    for i, (rv, topp, topk, temp) in enumerate(rows):
        if is_argmax(topp, topk):
            maxima = np.flatnonzero(logits[i] == logits[i].max())
            expected.append(int(maxima[0]) if maxima.size == 1 else None)
        else:
            expected.append(reference(logits[i], rv, topp, topk, temp))
    standard = "integer output of the documented sampling algorithm, row by row"
    if None not in expected:
        verify.exact(tokens, np.array(expected), "token ids", standard=standard)
        return
    for i, want in enumerate(expected):
        what = f"row {i} token id"
        if want is None:
            verify.argmax(int(tokens[i]), logits[i], what + " (argmax)")
        else:
            verify.keep(judge.exact(int(tokens[i]), want, what, standard=standard))


def as_f32(rows: list[tuple]) -> list[tuple]:
    return [(float(f32(rv)), float(f32(p)), int(k), float(f32(t))) for rv, p, k, t in rows]


def vocab_logits(rows: int, dtype: str, seed) -> np.ndarray:
    """[rows, VOCAB]: noise below 0 (ties where the dtype makes them) under a top of 64
    distinct values 8 - j/8 (exact in every dtype), each row its own permutation: sampling
    within the top 64 has a unique order, argmax a unique maximum."""
    rng = rng_for("random_sample_batch-vocab", seed)
    out = np.empty((rows, VOCAB))
    for r in range(rows):
        x = np.minimum(np.round(rng.standard_normal(VOCAB) * 4) / 4, 0.0) - 1.0
        x[rng.choice(VOCAB, 64, replace=False)] = 8.0 - np.arange(64) / 8
        out[r] = x
    return out.astype(np.float32).astype(DType.parse(dtype).numpy).astype(np.float64)


# name: (vocab, rows of (random_val, topp, topk, temperature))
CASES = {
    "b1_greedy_vocab": (VOCAB, [(0.0, 0.0, 1, 1.0)]),
    "b1_topk5_topp0.9": (256, [(0.05, 0.9, 5, 1.0)]),
    "b1_topk3_T0.5": (256, [(0.8, 0.8, 3, 0.5)]),
    # Every parameter differs between rows; argmax rows (topk 1 with a random_val that
    # would sample, topp 0) among sampled ones.
    "b8_mixed": (256, [(0.8, 0.8, 3, 0.5), (0.05, 0.9, 5, 1.0), (0.15, 0.85, 10, 2.0),
                       (0.5, 0.3, 256, 1.0), (0.5, 0.9, 1, 1.0), (0.9, 1.0, 50, 1.0),
                       (0.3, 0.0, 20, 1.5), (0.99, 1.0, 50, 1.0)]),
    # The same random_val, topk and topp, eight temperatures: a kernel that applies one
    # row's temperature to all (or none) picks another token in most rows.
    "b8_temperatures": (256, [(0.6, 1.0, 256, t) for t in
                              (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)]),
    # Alternating argmax and sampled rows over SmolLM2's vocabulary.
    "b8_vocab_argmax_and_sampled": (VOCAB, [(0.7, 0.9, 1, 1.0), (0.35, 0.95, 40, 0.7),
                                            (0.0, 0.9, 50, 1.0), (0.8, 1.0, 64, 1.3),
                                            (0.45, 0.0, 40, 1.0), (0.2, 0.6, 30, 0.8),
                                            (0.9, 0.9, 1, 2.0), (0.55, 0.999, 20, 1.0)]),
}


def case_logits(name: str, vocab: int, batch: int, dtype: str) -> np.ndarray:
    if vocab == VOCAB:
        return vocab_logits(batch, dtype, (name, dtype))
    return np.stack([logits_for(vocab, dtype, (name, dtype, i)) for i in range(batch)])


def sample_margin(logits: np.ndarray, rv: float, topp: float, topk: int, temp: float) -> float:
    """How far the sampling limit is from the nearest boundary of a token's slice of the
    cumulative mass, relative to the mass it is drawn from: the float32 accumulation of a
    correct kernel moves a boundary by ~1e-6 of it, so a case needs a margin well above."""
    order = np.argsort(-logits, kind="stable")
    cum = np.cumsum(np.exp((logits[order] - logits[order[0]]) / temp))
    mass = min(cum[min(topk, len(cum)) - 1], topp * cum[-1])
    limit = rv * mass
    return float(np.min(np.abs(np.concatenate(([0.0], cum)) - limit)) / mass)


@pytest.mark.parametrize("case", list(CASES))
def test_op_random_sample_batch(case, dtype, infini_device, verify):
    vocab, rows = CASES[case]
    rows = as_f32(rows)
    logits = case_logits(case, vocab, len(rows), dtype)
    for i, (rv, topp, topk, temp) in enumerate(rows):  # the case's own soundness
        if not is_argmax(topp, topk) and rv > 0:
            m = sample_margin(logits[i], rv, topp, topk, temp)
            assert m > 1e-4, f"case design: row {i}'s limit is {m:.2g} from a slice boundary"
    verify.param(vocab=vocab, batch=len(rows), rows=[list(r) for r in rows])
    tokens = run_batch(verify, infini_device, logits, dtype, rows)
    judge_rows(verify, tokens, logits, rows)


# The distribution check: per row (topk, topp, temperature); each row's logits are its own
# permutation of these six, so a kernel reading another row's logits shows.
DIST_LOGITS = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 3.0])
DIST_ROWS = [(1, 1.0, 1.0), (2, 1.0, 1.0), (3, 1.0, 1.0), (4, 1.0, 0.5), (5, 1.0, 2.0),
             (6, 1.0, 1.0), (6, 0.5, 1.0), (4, 0.875, 3.0)]


def support(logits: np.ndarray, topp: float, topk: int, temp: float) -> list[int]:
    """The tokens some random_val in [0, 1) can pick: every rank whose slice starts below
    min(mass of the top-k, topp x total mass)."""
    if is_argmax(topp, topk):
        return [int(np.argmax(logits))]
    order = np.argsort(-logits, kind="stable")
    cum = np.cumsum(np.exp((logits[order] - logits[order[0]]) / temp))
    mass = min(cum[min(topk, len(cum)) - 1], topp * cum[-1])
    return sorted(int(t) for t in order[: int(np.searchsorted(cum, mass, side="left")) + 1])


def test_op_random_sample_batch_distribution(infini_device, verify):
    """Sweeping random_val over [0, 1) (shifted by i/8 in row i, so no two rows share one)
    visits exactly each row's own support (its top-k, cut by its top-p), each token for the
    random values the algorithm gives it under that row's temperature."""
    rng = rng_for("random_sample_batch-distribution")
    logits = np.stack([rng.permutation(DIST_LOGITS) for _ in DIST_ROWS])
    lt = to_device(logits, infini_device, "f32")
    result = Tensor.empty((len(DIST_ROWS),), "i32", infini_device)
    seen = [dict() for _ in DIST_ROWS]
    for r in np.linspace(0, 0.999, 200):
        rows = as_f32([((r + i / 8) % 1.0, topp, topk, temp)
                       for i, (topk, topp, temp) in enumerate(DIST_ROWS)])
        with unsupported_guard(verify):
            ops.random_sample_batch(result, lt, *(list(c) for c in zip(*rows)))
        tokens = result.numpy().astype(np.int64)
        expected = [reference(logits[i], *row) for i, row in enumerate(rows)]
        verify.exact(tokens, np.array(expected), f"random_val {r:.3f} (+ i/8 in row i)")
        for i, t in enumerate(tokens.tolist()):
            seen[i][t] = seen[i].get(t, 0) + 1
    for i, s in enumerate(seen):
        verify.measure(f"row {i}: tokens seen (count per token id)",
                       {str(k): v for k, v in sorted(s.items())})
    for i, (topk, topp, temp) in enumerate(DIST_ROWS):
        verify.exact(sorted(seen[i]), support(logits[i], topp, topk, temp),
                     f"row {i} tokens visited (topk {topk}, topp {topp}, T {temp})")


@generator("test_op_random_sample_batch_sweep")
def _random_sample_batch(r, n: int) -> list[dict]:
    """Batches of 1 to 9 rows, each row argmax (the maximum at the first, last, a middle
    index, tied) or sampled (the pick at the first, last or a middle rank of the row's own
    support, under its own temperature, top-k and top-p)."""
    def sampled():
        return {"mode": "sample", "where": r.choice(("first", "last", "middle")),
                "temperature": r.choice((0.5, 1.0, 2.0)), "topk": r.choice((0, 3, 17, 64)),
                "topp": r.choice((1.0, 1.0, 0.75, 0.5))}

    def argmax(where=None):
        return {"mode": "argmax",
                "where": where or r.choice(("first", "last", "middle", "tie_first",
                                            "tie_last")),
                "by": r.choice(("topk", "topp"))}

    cases = [{"vocab": 256, "rows": [argmax(w) for w in ("first", "last", "middle",
                                                         "tie_first")]
              + [sampled() | {"where": w} for w in ("first", "last", "middle")] + [argmax(
                  "tie_last")]},
             {"vocab": r.choice((5, 31)), "rows": [sampled()]},
             {"vocab": r.choice((1000, 4099)), "rows": [argmax() for _ in range(3)]}]
    while len(cases) < n:
        batch = r.choice((1, 2, 3, 5, 8, 9))
        cases.append({"vocab": r.choice((7, 64, 65, 200, 256)),
                      "rows": [r.choice((sampled, sampled, argmax))() for _ in range(batch)]})
    for c in cases:
        c["batch"] = len(c["rows"])
    return cases


def sample_row(vocab: int, p: dict, rng) -> tuple[np.ndarray, tuple]:
    """Distinct logits on a 1/128 grid in [0, vocab/128) (exact in every dtype for vocab
    <= 256) and the random_val in the middle of the target rank's slice of the row's own
    limited mass (topk 0: the whole vocabulary)."""
    logits = rng.permutation(vocab).astype(np.float64) / 128.0
    topk = p["topk"] or vocab
    topp, temp = float(f32(p["topp"])), p["temperature"]
    order = np.argsort(-logits, kind="stable")
    cum = np.cumsum(np.exp((logits[order] - logits[order[0]]) / temp))
    mass = min(cum[min(topk, vocab) - 1], topp * cum[-1])
    last = int(np.searchsorted(cum, mass, side="left"))
    rank = {"first": 0, "last": last, "middle": last // 2}[p["where"]]

    def width(k):
        return (min(cum[k], mass) - (cum[k - 1] if k else 0.0)) / mass

    while rank and width(rank) < 1e-3:  # a top-p cut just above a boundary: one rank up
        rank -= 1
    lo = cum[rank - 1] if rank else 0.0
    rv = float(f32((lo + min(cum[rank], mass)) / 2 / mass))
    return logits, (rv, topp, topk, temp)


def test_op_random_sample_batch_sweep(sweep_case, dtype, infini_device, verify):
    p = sweep_case.params
    verify.param(**describe(sweep_case))
    rng = rng_for("random_sample_batch-sweep", sweep_case.seed, sweep_case.name, dtype)
    vocab = p["vocab"]
    npd = DType.parse(dtype).numpy
    logits, rows = [], []
    for row in p["rows"]:
        if row["mode"] == "argmax":
            x = sweep_logits(vocab, row["where"], rng)
            x = x.astype(np.float32).astype(npd).astype(np.float64)  # judged as InfiniCore sees it
            # a random_val and temperature that would sample: only topk 1 / topp 0 makes it argmax
            params = (float(f32(rng.uniform(0.05, 0.95))), 0.0 if row["by"] == "topp" else 0.9,
                      1 if row["by"] == "topk" else 20, 1.5)
        else:
            x, params = sample_row(vocab, row, rng)
        logits.append(x)
        rows.append(params)
    logits = np.stack(logits)
    verify.param(row_params=str([list(r) for r in rows]))
    tokens = run_batch(verify, infini_device, logits, dtype, rows)
    judge_rows(verify, tokens, logits, rows)
