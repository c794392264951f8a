"""What a benchmark ran on, recorded with it: device, InfiniCore build, scale, machine.

Numbers of different devices, scales or InfiniCore builds are different quantities; a
saved run that does not say which it is gets compared with the wrong one. So:

* the machine info (pytest-benchmark's `machine_info`) gains an `infinilm` block: device
  kind and product name, the InfiniCore identity, torch/transformers/CUDA versions, the
  scale and the machine id;
* every benchmark's extra_info carries `infinicore` (the build key), `device` and `scale`,
  and its id ends in `@<scale>` (test_perf_decode[f32-b1-ours] is 16 + 16 tokens at the
  cpu scale and 32 + 128 at full);
* pytest-benchmark's storage (`--benchmark-storage`) gets one folder per
  `<device>-<scale>-<build>`, so its own `--benchmark-compare` never mixes them;
* a timed run writes `--benchmark-json` (with every round) to its run directory
  (`<run dir>/benchmark.json`) unless one is named: `infinilm-conformance compare` reads it
  there, and `compare --baseline last-green` gates on it.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest

from conformance.results import build_slug, current_build_key, machine_id


@functools.lru_cache(maxsize=1)
def build_key() -> str | None:
    return current_build_key()


def _device(config: pytest.Config) -> str:
    return str(config.getoption("--infini-device"))


def timing_requested(config: pytest.Config) -> bool:
    """Whether pytest-benchmark will time (before its session exists): enabled, and no
    xdist (which disables it)."""
    try:
        disabled = config.getoption("benchmark_disable") and \
            not config.getoption("benchmark_enable")
    except ValueError:  # pytest-benchmark not installed
        return False
    xdist = config.getoption("dist", "no") != "no" or bool(os.environ.get("PYTEST_XDIST_WORKER"))
    return not disabled and not xdist


def machine(config: pytest.Config) -> str:
    from conformance.results import cpus, device_name

    return machine_id(device_name(_device(config)), cpus())


def partition_name(config: pytest.Config, scale: str) -> str:
    kind = _device(config).split(":")[0]
    return f"{kind}-{scale}-{build_slug(build_key())}"


def partition_storage(config: pytest.Config, scale: str) -> None:
    """Point --benchmark-storage (a file:// URL or a path) at its partition folder."""
    if getattr(config, "_infinilm_bench_partitioned", False) or not timing_requested(config):
        return
    try:
        storage = config.getoption("benchmark_storage")
    except ValueError:
        return
    scheme, sep, rest = str(storage).partition("://")
    if sep and scheme != "file":
        return  # elasticsearch: its documents carry the machine info instead
    path = Path(rest if sep else storage) / partition_name(config, scale)
    config.option.benchmark_storage = f"file://{path}"
    config._infinilm_bench_partitioned = True
    bs = getattr(config, "_benchmarksession", None)
    if bs is not None:  # this conftest loaded after pytest-benchmark opened its storage
        from pytest_benchmark.utils import load_storage

        bs.storage = load_storage(config.option.benchmark_storage, logger=bs.logger,
                                  default_machine_id=bs.machine_id,
                                  netrc=config.getoption("benchmark_netrc"))
        if bs.compare:
            bs.handle_loading()


def default_json(config: pytest.Config) -> None:
    """A timed run without --benchmark-json writes it to <run dir>/benchmark.json."""
    bs = getattr(config, "_benchmarksession", None)
    run_dir = getattr(config, "_infinilm_run_dir", None)
    if bs is None or bs.disabled or bs.json or run_dir is None or \
            getattr(config, "workerinput", None) is not None:
        return
    bs.json = Path(run_dir) / "benchmark.json"


def stamp(benchmark, config: pytest.Config, scale: str) -> None:
    benchmark.extra_info.update(infinicore=build_key(),
                                device_kind=_device(config).split(":")[0],
                                scale=scale)
    suffix = f"@{scale}"
    if not benchmark.fullname.endswith(suffix):
        benchmark.name += suffix
        benchmark.fullname += suffix


def _version(module: str) -> str | None:
    m = sys.modules.get(module)
    if m is not None:
        return getattr(m, "__version__", None)
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - a version is nice to have
        return None


def machine_info(config: pytest.Config, scale: str) -> dict:
    from conformance.results import device_name

    device = _device(config)
    torch = sys.modules.get("torch")
    info = {"device": device, "device_kind": device.split(":")[0],
            "device_name": device_name(device), "infinicore": build_key(),
            "scale": scale, "machine_id": machine(config),
            "torch": _version("torch"), "transformers": _version("transformers"),
            "cuda": getattr(getattr(torch, "version", None), "cuda", None)}
    try:
        from infinilm_models.runtime.capabilities import current_build

        info["infinicore_label"] = current_build().identity.label
    except Exception:  # noqa: BLE001 - recorded as missing
        info["infinicore_label"] = None
    return info
