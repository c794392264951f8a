"""Timing of the benchmarks: the scales (sizes and round budgets), the device
synchronization of each side, pytest-benchmark in pedantic mode, and the ours/reference
ratios of one configuration. A plain module: the benchmarks and their conftest import it.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Scale:
    name: str
    # op level
    prefill_seqs: tuple[int, ...]
    decode_cache: int
    batches: tuple[int, ...]
    # model level
    layers: int
    model_prefill_seqs: tuple[int, ...]
    decode_prompt: int
    decode_tokens: int
    model_batches: tuple[int, ...]
    # timing: rounds = clamp(budget / first-call time, min_rounds, max_rounds)
    budget_s: float
    min_rounds: int
    max_rounds: int
    warmup_rounds: int
    # decode contexts: (id, prompt tokens, positions allocated; 0: prompt + new tokens)
    decode_contexts: tuple[tuple[str, int, int], ...] = ()

    def contexts(self) -> tuple[tuple[str, int, int], ...]:
        return self.decode_contexts or ((f"p{self.decode_prompt}", self.decode_prompt, 0),)


SCALES = {
    # One run per benchmark with timing off: SmolLM2 per-layer shapes, 2 layers, tiny seqs.
    "smoke": Scale("smoke", (8,), 16, (1, 2), 2, (8,), 4, 4, (1, 2), 0.0, 1, 1, 0),
    # A 2-core CPU with InfiniCore's naive gemm: the full shapes would take hours.
    "cpu": Scale("cpu", (32, 128), 128, (1, 8), 30, (16, 64), 16, 16, (1, 8), 0.5, 3, 20, 1),
    # The shapes: prefill 128/1024, decode against a 1024 cache, model prefill
    # 128/512, 128 new tokens.
    # Decode after a 32-token prompt (the launch-limited case), after 2,048 tokens, and 200
    # positions filled of 256 or of 4,096 allocated (what a step reads against what a
    # cache holds: issue 33).
    "full": Scale("full", (128, 1024), 1024, (1, 8), 30, (128, 512), 32, 128, (1, 8),
                  0.5, 5, 200, 2,
                  (("p32", 32, 0), ("p2048", 2048, 0), ("fill200-alloc256", 72, 256),
                   ("fill200-alloc4096", 72, 4096))),
}


def resolve_scale(config: pytest.Config) -> Scale:
    name = config.getoption("--bench-scale")
    if name == "auto":
        from . import keys

        bs = getattr(config, "_benchmarksession", None)
        disabled = bs.disabled if bs is not None else not keys.timing_requested(config)
        device = str(config.getoption("--infini-device")).split(":")[0]
        name = "smoke" if disabled else ("cpu" if device == "cpu" else "full")
    return SCALES[name]


def torch_device_for(infini_device) -> str:
    from conformance.placement import torch_device

    return torch_device(str(infini_device))


def torch_note(infini_device, tdev: str) -> str | None:
    from conformance.placement import torch_note as note

    return note(infini_device, tdev)


def infini_sync(device) -> Callable[[], None]:
    """InfiniCore work is asynchronous on GPUs: wait through the runtime (infinirt)."""
    return device.synchronize


def torch_sync(torch_device: str) -> Callable[[], None]:
    import torch

    from conformance.placement import synchronize

    return synchronize(torch, torch_device)


# group -> impl -> mean seconds, for the ours/reference ratio of the same configuration.
MEANS: dict[str, dict[str, float]] = defaultdict(dict)


def run_benchmark(benchmark, fn: Callable[[], object], sync: Callable[[], None],
                  scale: Scale, *, group: str, impl: str, setup: Callable | None = None,
                  first_call_s: float | None = None, min_rounds: int | None = None) -> dict:
    """Time `fn` (already run once by the caller: descriptors exist, output checked).

    `fn` must return only once the device is done (it calls `sync`); `setup` runs before
    every round outside the timed region. Returns timing info for extra_info/results.
    """
    benchmark.group = group
    benchmark.extra_info.update(impl=impl, scale=scale.name)
    if getattr(benchmark, "disabled", False):
        return {}
    if first_call_s is None:
        if setup is not None:
            setup()
        t = time.perf_counter()
        fn()
        first_call_s = time.perf_counter() - t
    lo = min_rounds or scale.min_rounds
    rounds = max(lo, min(scale.max_rounds, math.ceil(scale.budget_s / max(first_call_s, 1e-7))))
    kwargs = {"setup": (lambda: (setup(), None)[1]) if setup else None}
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=scale.warmup_rounds, iterations=1,
                       **kwargs)
    st = benchmark.stats.stats
    MEANS[group][impl] = st.median
    info = {"mean_s": st.mean, "median_s": st.median, "min_s": st.min, "stddev_s": st.stddev,
            "rounds": rounds, "warmup_rounds": scale.warmup_rounds}
    benchmark.extra_info.update(rounds=rounds, warmup_rounds=scale.warmup_rounds)
    return info


def ratio_to(group: str, impl: str, reference: str) -> float | None:
    """median(impl) / median(reference) in this group, if both ran in this process."""
    m = MEANS.get(group, {})
    if impl in m and reference in m and m[reference] > 0:
        return m[impl] / m[reference]
    return None


def ratios(benchmarks: list[dict]) -> list[dict]:
    """Per group: time of ours (infinicore/ours) over the reference (torch/hf), on medians:
    a shared CPU gives the odd descheduled round that would dominate a mean."""
    by_group: dict[str, dict[str, float]] = defaultdict(dict)
    where: dict[tuple[str, str], dict] = {}
    for b in benchmarks:
        extra = b.get("extra_info") or {}
        impl = extra.get("impl")
        stats = b.get("stats") or {}
        if impl and "median" in stats:
            by_group[b["group"]][impl] = stats["median"]
            where[b["group"], impl] = extra
    rows = []
    for group, m in sorted(by_group.items()):
        for ours, ref in (("infinicore", "torch"), ("ours", "hf")):
            if ours in m and ref in m:
                extra = where[group, ref]
                rows.append({"group": group, "ours": ours, "reference": ref,
                             "ours_median_s": m[ours], "reference_median_s": m[ref],
                             "time_ratio": m[ours] / m[ref],
                             "speedup_vs_reference": m[ref] / m[ours],
                             # which torch: "cpu" against an accelerator is said so
                             "reference_device": extra.get("torch_device"),
                             "reference_note": extra.get("torch_note")})
    return rows
