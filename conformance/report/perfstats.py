"""Is a benchmark slower than its baseline, or only noisier? Medians over the timed rounds,
a factor, and a rank test (the approach of asv's `continuous`): a change counts only when
the medians differ by more than the factor AND the rounds themselves say so, by a one-sided
Mann-Whitney U test at level `alpha`. A shared CPU deschedules the odd round; a mean or a
single number would follow it, the median and the ranks do not.

Pure Python (no SciPy here): the exact U distribution (the coefficients of a Gaussian
binomial) for samples of at most EXACT_MAX rounds without ties, else the normal
approximation with the tie correction and a continuity correction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EXACT_MAX = 50


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        raise ValueError("median of no values")
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _u_statistic(x: list[float], y: list[float]) -> float:
    """U of x: pairs where x is larger, ties counting one half. From the midranks of the
    pooled sample (U = rank sum of x - n(n+1)/2), O((n+m) log(n+m)): a fast benchmark
    saves tens of thousands of rounds, and counting its pairs one by one took 47 s for
    24,000 rounds a side."""
    pooled = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    rank_sum = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j < len(pooled) and pooled[j][0] == pooled[i][0]:
            j += 1
        midrank = (i + 1 + j) / 2.0  # ranks i+1..j share their mean
        rank_sum += midrank * sum(1 for k in range(i, j) if pooled[k][1] == 0)
        i = j
    n = len(x)
    return rank_sum - n * (n + 1) / 2.0


def _exact_upper_tail(u: float, n: int, m: int) -> float:
    """P(U >= u) under H0 for samples of n and m without ties: the U counts are the
    coefficients of the Gaussian binomial [n + m choose n](q)."""
    poly = [1]
    for i in range(1, n + 1):
        # multiply by (1 - q^(m + i)), then divide by (1 - q^i) (exact: integer series)
        grown = poly + [0] * (m + i)
        for k in range(len(poly)):
            grown[k + m + i] -= poly[k]
        for k in range(i, len(grown)):
            grown[k] += grown[k - i]
        poly = grown[: n * m + 1]
    total = sum(poly)
    start = math.ceil(u - 1e-9)
    return sum(poly[start:]) / total


def mann_whitney_greater(x: list[float], y: list[float]) -> float:
    """One-sided p-value that x tends to be larger than y."""
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        return 1.0
    u = _u_statistic(x, y)
    values = list(x) + list(y)
    tied = len(set(values)) != len(values)
    if not tied and n <= EXACT_MAX and m <= EXACT_MAX:
        return _exact_upper_tail(u, n, m)
    counts: dict[float, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    big = n + m
    tie_term = sum(t ** 3 - t for t in counts.values()) / (big * (big - 1))
    var = n * m / 12.0 * ((big + 1) - tie_term)
    if var <= 0:
        return 1.0
    z = (u - n * m / 2.0 - 0.5) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@dataclass
class Change:
    """One benchmark against its baseline."""

    ratio: float              # median(run) / median(baseline)
    p_slower: float | None    # None: a side has no rounds recorded (medians only)
    p_faster: float | None
    verdict: str              # slower | faster | same | noise (beyond the band, not shown
    #                           by the rounds)


def judge(run: list[float], baseline: list[float], tolerance: float = 0.10,
          alpha: float = 0.05, run_median: float | None = None,
          baseline_median: float | None = None) -> Change:
    """`run` and `baseline`: the timed rounds (seconds). Slower means: median ratio above
    1 + tolerance and the rank test at `alpha`; faster the same way down. Without rounds
    on a side (a file saved without data), the medians given decide alone."""
    a = median(run) if run else run_median
    b = median(baseline) if baseline else baseline_median
    if a is None or b is None:
        raise ValueError("a benchmark without rounds or a median")
    ratio = a / b if b > 0 else math.inf
    if not run or not baseline:
        verdict = "slower" if ratio > 1 + tolerance else \
            "faster" if ratio < 1 / (1 + tolerance) else "same"
        return Change(ratio, None, None, verdict)
    p_slow = mann_whitney_greater(run, baseline)
    p_fast = mann_whitney_greater(baseline, run)
    if ratio > 1 + tolerance:
        verdict = "slower" if p_slow <= alpha else "noise"
    elif ratio < 1 / (1 + tolerance):
        verdict = "faster" if p_fast <= alpha else "noise"
    else:
        verdict = "same"
    return Change(ratio, p_slow, p_fast, verdict)
