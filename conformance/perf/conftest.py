"""Benchmarks of InfiniCore (per op, vs torch) and of our model (vs transformers eager).

Every benchmark first runs its configuration once and checks the output against the
reference (a fast wrong kernel is not a result), then times it with pytest-benchmark in
pedantic mode: inputs, descriptors and workspaces exist before the timed region, the
device is synchronized inside every timed call, warmup rounds are explicit.

Sizes come from `--bench-scale` (see SCALES); with timing disabled (the default test run,
xdist) the smoke scale runs each benchmark once so that none of them can rot.

What ran is recorded with every benchmark (keys.py): the machine info names the device
and its product, the InfiniCore build, torch/transformers/CUDA and the scale; every
benchmark's extra_info carries the build key, the device kind and the scale, and its id
ends in `@<scale>`; pytest-benchmark's storage is partitioned by (device, scale, build);
a timed run writes its JSON, rounds included, to <run dir>/benchmark.json, where
`infinilm-conformance compare` finds it.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pytest

from . import keys
from .peaks import Peak, peak_for


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


SCALES = {
    # One run per benchmark with timing off: SmolLM2 per-layer shapes, 2 layers, tiny seqs.
    "smoke": Scale("smoke", (8,), 16, (1, 2), 2, (8,), 4, 4, (1, 2), 0.0, 1, 1, 0),
    # A 2-core CPU with InfiniCore's naive gemm: the full shapes would take hours.
    "cpu": Scale("cpu", (32, 128), 128, (1, 8), 30, (16, 64), 16, 16, (1, 8), 0.5, 3, 20, 1),
    # The shapes: prefill 128/1024, decode against a 1024 cache, model prefill
    # 128/512, 128 new tokens.
    "full": Scale("full", (128, 1024), 1024, (1, 8), 30, (128, 512), 32, 128, (1, 8),
                  0.5, 5, 200, 2),
}


def resolve_scale(config: pytest.Config) -> Scale:
    name = config.getoption("--bench-scale")
    if name == "auto":
        bs = getattr(config, "_benchmarksession", None)
        disabled = bs.disabled if bs is not None else not keys.timing_requested(config)
        device = str(config.getoption("--infini-device")).split(":")[0]
        name = "smoke" if disabled else ("cpu" if device == "cpu" else "full")
    return SCALES[name]


def pytest_configure(config: pytest.Config) -> None:
    # Before pytest-benchmark opens its storage (its own pytest_configure is trylast):
    # one folder per (device, scale, build), so that nothing incomparable is compared.
    keys.partition_storage(config, resolve_scale(config).name)


def pytest_collection_finish(session: pytest.Session) -> None:
    keys.default_json(session.config)


@pytest.fixture(autouse=True)
def _what_ran(request: pytest.FixtureRequest, bench_scale: Scale) -> None:
    """Every benchmark names its build, device and scale (extra_info, and `@<scale>` in
    its id: the same test has other sizes at another scale)."""
    if "benchmark" in request.fixturenames:
        keys.stamp(request.getfixturevalue("benchmark"), request.config, bench_scale.name)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["infinilm"] = keys.machine_info(config, resolve_scale(config).name)


@pytest.fixture(scope="session")
def bench_scale(pytestconfig: pytest.Config) -> Scale:
    return resolve_scale(pytestconfig)


def torch_device_for(infini_device) -> str:
    from conformance.model.harness import torch_device

    return torch_device(str(infini_device))


@pytest.fixture(scope="session")
def device_peak(infini_device, pytestconfig: pytest.Config) -> Peak:
    name = None
    if infini_device.type == "nvidia":
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(infini_device.index)
    peak = peak_for(infini_device.type, name)
    pytestconfig._infinilm_peak = peak.to_dict()  # saved with the run (update_json hook)
    return peak


def infini_sync(device) -> Callable[[], None]:
    """InfiniCore work is asynchronous on GPUs: wait through the runtime (infinirt)."""
    return device.synchronize


def torch_sync(torch_device: str) -> Callable[[], None]:
    import torch

    if torch_device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


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


def _ratios(benchmarks: list[dict]) -> list[dict]:
    """Per group: time of ours (infinicore/ours) over the reference (torch/hf), on medians:
    a shared CPU gives the odd descheduled round that would dominate a mean."""
    by_group: dict[str, dict[str, float]] = defaultdict(dict)
    for b in benchmarks:
        impl = (b.get("extra_info") or {}).get("impl")
        stats = b.get("stats") or {}
        if impl and "median" in stats:
            by_group[b["group"]][impl] = stats["median"]
    rows = []
    for group, m in sorted(by_group.items()):
        for ours, ref in (("infinicore", "torch"), ("ours", "hf")):
            if ours in m and ref in m:
                rows.append({"group": group, "ours": ours, "reference": ref,
                             "ours_median_s": m[ours], "reference_median_s": m[ref],
                             "time_ratio": m[ours] / m[ref],
                             "speedup_vs_reference": m[ref] / m[ours]})
    return rows


def pytest_benchmark_update_json(config, benchmarks, output_json) -> None:
    """Saved runs carry the scale, the device peak table entry and the ratio table."""
    output_json["infinilm"] = {
        "scale": asdict(resolve_scale(config)),
        "infini_device": config.getoption("--infini-device"),
        "infinicore": keys.build_key(),
        "machine_id": keys.machine(config),
        "ratios": _ratios(output_json.get("benchmarks", [])),
    }
    peak = getattr(config, "_infinilm_peak", None)
    if peak is not None:
        output_json["infinilm"]["peak"] = peak


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or bs.disabled or not bs.benchmarks:
        return
    rows = _ratios([b.as_dict(include_data=False) for b in bs.benchmarks])
    if not rows:
        return
    tr = terminalreporter
    tr.section("infinilm perf: ours / reference (median time ratio; < 1 = ours faster)")
    width = max(len(r["group"]) for r in rows)
    tr.write_line(f"{'configuration':<{width}}  {'ours ms':>10}  {'ref ms':>10}  {'ratio':>7}")
    for r in rows:
        tr.write_line(f"{r['group']:<{width}}  {r['ours_median_s'] * 1e3:>10.3f}  "
                      f"{r['reference_median_s'] * 1e3:>10.3f}  {r['time_ratio']:>7.3f}")
