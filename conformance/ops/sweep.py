"""Sampled sweeps of each op's case space, seeded: not lucky cases.

A defect that shows only on some sizes (a dropped tail when a row is not a multiple of
16, a wrong last tile, a sampler that never returns the last index, an epsilon that only
matters for small rows) is found by covering the classes that matter: sizes on both sides
of 16/32/64 and common tile boundaries, odd sizes, one-token decode (M = 1), the maximum
at the first, last and a middle position, ties, small and large magnitudes. Each op draws
`n` cases from its space with a generator seeded by `--sweep-seed` (recorded in every
case's parameters), plus the classes that must always be present.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

# Sizes on both sides of the usual vector widths and tile edges.
EDGES = (1, 3, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 257)
WIDE = (511, 513, 1023, 1025)
DEFAULT_CASES = 8


@dataclass(frozen=True)
class SweepCase:
    name: str
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:  # the pytest id
        return self.name


def _elementwise(r: random.Random, n: int) -> list[dict]:
    cases = [{"shape": [1, r.choice(EDGES[3:])], "layout": "plain"},  # decode, M = 1
             {"shape": [r.choice((3, 7)), r.choice((17, 33, 65, 73))], "layout": "plain"}]
    while len(cases) < n:
        cols = r.choice(EDGES + WIDE)
        cases.append({"shape": [r.choice((1, 2, 3, 5, 9)), cols],
                      "layout": r.choice(("plain", "inplace", "strided", "broadcast"))})
    return cases


def _rms_norm(r: random.Random, n: int) -> list[dict]:
    # Small magnitudes make epsilon matter (mean(x^2) ~ eps), so a wrong epsilon shows in
    # bf16 as well as in f32; large ones test the sum of squares' range.
    cases = [{"shape": [1, 576], "scale": 1e-3, "eps": 1e-5},
             {"shape": [3, r.choice((63, 65, 127, 129))], "scale": 1.0, "eps": 1e-6}]
    while len(cases) < n:
        cases.append({"shape": [r.choice((1, 2, 5)), r.choice(EDGES[4:] + WIDE + (4100,))],
                      "scale": r.choice((2e-3, 1.0, 30.0)), "eps": r.choice((1e-6, 1e-5))})
    return cases


def _gemm(r: random.Random, n: int) -> list[dict]:
    # M = 1 with enough outputs that a systematic scale error is measurable (decode gemv).
    cases = [{"m": 1, "k": 128, "n": 576, "batch": None, "layout": "wT", "beta": 0.0},
             {"m": 1, "k": r.choice((65, 127, 129)), "n": 320, "batch": None, "layout": "wT",
              "beta": 1.0},
             {"m": 17, "k": 33, "n": 65, "batch": 3, "layout": "row", "beta": 0.0}]
    while len(cases) < n:
        cases.append({"m": r.choice((1, 2, 3, 7, 16, 17, 33)),
                      "k": r.choice((1, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 255)),
                      "n": r.choice((1, 15, 16, 17, 33, 64, 65, 127, 129, 257)),
                      "batch": r.choice((None, None, 2, 3)), "layout": r.choice(("wT", "row")),
                      "beta": r.choice((0.0, 0.0, 1.0))})
    return cases


def _rope(r: random.Random, n: int) -> list[dict]:
    cases = [{"tokens": 1, "heads": 3, "head_dim": 64, "algo": "gpt_neox",
              "pos": [r.randrange(1, 1024)]}]  # decode: one token far from position 0
    while len(cases) < n:
        t = r.choice((1, 2, 5, 17))
        cases.append({"tokens": t, "heads": r.choice((1, 3, 8)),
                      "head_dim": r.choice((8, 16, 24, 64, 96, 128)),
                      "algo": r.choice(("gpt_neox", "gpt_neox", "gpt_j")),
                      "pos": sorted(r.sample(range(1024), t))})
    # Upstream's 4-D layout [batch, seq, heads, head_dim] with positions per batch row
    # (appended last: the 3-D cases above keep their draws and ids).
    t, b = r.choice((1, 3, 17)), r.choice((2, 3))
    cases.append({"tokens": t, "heads": r.choice((1, 3, 8)),
                  "head_dim": r.choice((8, 24, 64, 128)),
                  "algo": r.choice(("gpt_neox", "gpt_j")), "batch": b,
                  "pos": [sorted(r.sample(range(1024), t)) for _ in range(b)]})
    return cases


def _causal_softmax(r: random.Random, n: int) -> list[dict]:
    """`peak`: one visible key of every row raised well above the others (the newest, the
    oldest, or one in the middle), so the probability that lands there is large and a
    kernel that loses or misplaces it fails in every dtype."""
    cases = [{"shape": [9, 1, r.choice((33, 65, 129, 257))], "peak": "newest"},  # decode
             {"shape": [3, 5, r.choice((5, 20, 70))], "peak": "oldest"},
             # decode over a long cache, whatever else is drawn: past 256 and past 2048
             {"shape": [9, 1, r.choice((300, 511, 700))], "peak": r.choice(("newest",
                                                                            "oldest"))},
             {"shape": [3, 1, r.choice((2049, 2100, 3000))], "peak": "middle"}]
    while len(cases) < n:
        q = r.choice((1, 2, 5, 16, 17))
        cases.append({"shape": [r.choice((1, 3, 9)), q,
                                q + r.choice((0, 1, 15, 16, 63, 127, 240))],
                      "peak": r.choice((None, "newest", "oldest", "middle"))})
    return cases


def _swiglu(r: random.Random, n: int) -> list[dict]:
    cases = [{"shape": [1, 1536]}]
    while len(cases) < n:
        cases.append({"shape": [r.choice((1, 2, 3, 7)), r.choice(EDGES[3:] + WIDE)]})
    # 1-D and 4-D inputs (upstream's NVIDIA kernel computes strides for 2-D/3-D only)
    cases.append({"shape": [r.choice(EDGES[3:] + WIDE + (1536,))]})
    cases.append({"shape": [r.choice((1, 2)), r.choice((1, 3)), r.choice((1, 7, 9)),
                            r.choice(EDGES[3:] + WIDE)]})
    return cases


def _rearrange(r: random.Random, n: int) -> list[dict]:
    cases = []
    while len(cases) < n:
        nd = r.choice((2, 3, 4))
        shape = [r.choice((1, 2, 3, 5, 7, 16, 17, 33)) for _ in range(nd)]
        perm = list(range(nd))
        while perm == list(range(nd)) and nd > 1:
            r.shuffle(perm)
        cases.append({"shape": shape, "perm": perm, "pad": r.choice((0, 0, 3))})
    return cases


def _random_sample(r: random.Random, n: int) -> list[dict]:
    """The maximum (or the sampled token) at every position class."""
    cases = []
    for where in ("first", "last", "middle", "tie_first", "tie_last"):
        cases.append({"mode": "argmax", "vocab": r.choice((2, 31, 256, 1000, 4099)),
                      "where": where})
    for where in ("first", "last", "middle"):
        cases.append({"mode": "sample", "vocab": r.choice((5, 31, 256)), "where": where})
    while len(cases) < n:
        cases.append({"mode": r.choice(("argmax", "sample")), "vocab": r.choice((7, 64, 300)),
                      "where": r.choice(("first", "last", "middle"))})
    return cases


GENERATORS: dict[str, Callable[[random.Random, int], list[dict]]] = {
    "test_op_elementwise_sweep": _elementwise,
    "test_op_rms_norm_sweep": _rms_norm,
    "test_op_gemm_sweep": _gemm,
    "test_op_rope_sweep": _rope,
    "test_op_causal_softmax_sweep": _causal_softmax,
    "test_op_swiglu_sweep": _swiglu,
    "test_op_rearrange_sweep": _rearrange,
    "test_op_random_sample_sweep": _random_sample,
}


def generator(test: str) -> Callable:
    """Register a test module's own case generator: `@generator("test_op_topk_sweep")`
    above `def _topk(r, n) -> list[dict]` (the module is imported before collection asks)."""
    def register(fn: Callable[[random.Random, int], list[dict]]):
        if test in GENERATORS:
            raise ValueError(f"sweep generator for {test} registered twice")
        GENERATORS[test] = fn
        return fn
    return register


def cases_for(test: str, seed: int, n: int = 0) -> list[SweepCase]:
    gen = GENERATORS[test]
    r = random.Random(f"{test}:{seed}")
    out = []
    for i, params in enumerate(gen(r, n or DEFAULT_CASES)):
        short = "-".join(f"{v}" for v in params.values() if not isinstance(v, list)
                         ) or "case"
        dims = "x".join(str(d) for d in params.get("shape", []))
        out.append(SweepCase(f"s{i}-{dims or short}" if dims else f"s{i}-{short}",
                             seed, params))
    return out


def describe(case: SweepCase) -> dict:
    return {"sweep_seed": case.seed, **asdict(case)["params"]}
