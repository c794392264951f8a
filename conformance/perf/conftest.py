"""Benchmarks of InfiniCore (per op, vs torch) and of our model (vs transformers eager).

Every benchmark first runs its configuration once and checks the output against the
reference (a fast wrong kernel is not a result), then times it with pytest-benchmark in
pedantic mode: inputs, descriptors and workspaces exist before the timed region, the
device is synchronized inside every timed call, warmup rounds are explicit.

Sizes come from `--bench-scale` (see timing.SCALES); with timing disabled (the default test run,
xdist) the smoke scale runs each benchmark once so that none of them can rot.

What ran is recorded with every benchmark (keys.py): the machine info names the device
and its product, the InfiniCore build, torch/transformers/CUDA and the scale; every
benchmark's extra_info carries the build key, the device kind and the scale, and its id
ends in `@<scale>`; pytest-benchmark's storage is partitioned by (device, scale, build);
a timed run writes its JSON, rounds included, to <run dir>/benchmark.json, where
`infinilm-conformance compare` finds it.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest

from . import keys
from .peaks import Peak, peak_for
from .timing import Scale, ratios, resolve_scale


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


def pytest_benchmark_update_json(config, benchmarks, output_json) -> None:
    """Saved runs carry the scale, the device peak table entry and the ratio table."""
    output_json["infinilm"] = {
        "scale": asdict(resolve_scale(config)),
        "infini_device": config.getoption("--infini-device"),
        "infinicore": keys.build_key(),
        "machine_id": keys.machine(config),
        "ratios": ratios(output_json.get("benchmarks", [])),
    }
    peak = getattr(config, "_infinilm_peak", None)
    if peak is not None:
        output_json["infinilm"]["peak"] = peak


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or bs.disabled or not bs.benchmarks:
        return
    rows = ratios([b.as_dict(include_data=False) for b in bs.benchmarks])
    if not rows:
        return
    tr = terminalreporter
    tr.section("infinilm perf: ours / reference (median time ratio; < 1 = ours faster)")
    width = max(len(r["group"]) for r in rows)
    tr.write_line(f"{'configuration':<{width}}  {'ours ms':>10}  {'ref ms':>10}  {'ratio':>7}"
                  "  ref on")
    for r in rows:
        tr.write_line(f"{r['group']:<{width}}  {r['ours_median_s'] * 1e3:>10.3f}  "
                      f"{r['reference_median_s'] * 1e3:>10.3f}  {r['time_ratio']:>7.3f}  "
                      f"{r['reference_device'] or '?'}")
    notes = sorted({r["reference_note"] for r in rows if r["reference_note"]})
    for note in notes:
        tr.write_line(f"note: {note}")
