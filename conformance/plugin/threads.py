"""Threads sized to the workers, and `-n auto` sized to the machine.

Every pytest process that runs checks (a serial run, or each of N xdist workers) gets
cores / N threads for torch and for InfiniCore's OpenMP, set before either library starts
its pool: N workers with a full-size pool each would run N x cores threads on the cores
and spend their time switching. A user's own OMP_NUM_THREADS, or INFINILM_THREADS, wins.

`-n auto` on an NVIDIA runner counts what a worker costs: one CUDA context plus the models
of a check (SmolLM2 in four precisions is under 2 GiB), so the GPU's memory allows far more
workers than the cores do, and the cores (a worker also runs the float64 references on
the host) decide.
"""

from __future__ import annotations

import os

import pytest

_MARK = "INFINILM_OMP_NUM_THREADS_SET"  # the OMP_NUM_THREADS value this module chose
GPU_GIB_PER_WORKER = 6.0  # a CUDA context, transformers' and our models, activations


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_count(config: pytest.Config) -> int:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return max(1, int(workerinput.get("workercount", 1)))
    return 1


def threads_per_worker(config: pytest.Config) -> tuple[int, str]:
    """(threads, why) for this process."""
    explicit = os.environ.get("INFINILM_THREADS")
    if explicit:
        return max(1, int(explicit)), "INFINILM_THREADS"
    n, workers = cores(), worker_count(config)
    return max(1, n // workers), f"{n} cores / {workers} worker(s)"


def configure(config: pytest.Config) -> str:
    """Set this process's thread counts (before InfiniCore is loaded and before torch runs
    anything); returns what was set, for the record."""
    threads, why = threads_per_worker(config)
    # xdist workers inherit the controller's environment: a value this module set there is
    # ours to replace, one the user set is not.
    user_omp = "OMP_NUM_THREADS" in os.environ and os.environ.get(_MARK) != \
        os.environ["OMP_NUM_THREADS"]
    if user_omp and not os.environ.get("INFINILM_THREADS"):
        omp = os.environ["OMP_NUM_THREADS"]
        why_omp = "OMP_NUM_THREADS set by the user"
    else:
        omp = str(threads)
        os.environ["OMP_NUM_THREADS"] = omp  # read by InfiniCore's OpenMP at its first region
        os.environ[_MARK] = omp
        why_omp = why
    try:
        import torch

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(max(1, min(threads, 4)))
        except RuntimeError:  # already started: keep it
            pass
    except ImportError:
        pass
    return f"torch {threads} thread(s) ({why}), InfiniCore OpenMP {omp} ({why_omp})"


def auto_workers(config: pytest.Config) -> int | None:
    """`-n auto` on NVIDIA: min(cores, GPU memory / GPU_GIB_PER_WORKER); None elsewhere
    (xdist's own choice: one per core)."""
    device = str(config.getoption("--infini-device", "cpu"))
    if not device.startswith("nvidia"):
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        index = int(device.partition(":")[2] or 0)
        total = torch.cuda.get_device_properties(index).total_memory / 2**30
    except Exception:  # noqa: BLE001 - no torch CUDA: xdist decides
        return None
    n = max(1, min(cores(), int(total // GPU_GIB_PER_WORKER)))
    config._infinilm_auto_workers = (
        f"-n auto: {n} workers on {device} ({cores()} cores, {total:.0f} GiB of GPU memory at "
        f"{GPU_GIB_PER_WORKER:g} GiB per worker)")
    return n


def describe(config: pytest.Config) -> str:
    """What the run's workers use, for the record (written by the controller)."""
    workers = getattr(config.option, "numprocesses", None) or 1
    if os.environ.get("INFINILM_THREADS"):
        return f"INFINILM_THREADS={os.environ['INFINILM_THREADS']} per worker, {workers} worker(s)"
    omp = os.environ.get("OMP_NUM_THREADS")
    if omp and os.environ.get(_MARK) != omp:
        return (f"{cores()} cores, {workers} worker(s): torch {max(1, cores() // workers)} "
                f"thread(s) each, InfiniCore OpenMP {omp} (OMP_NUM_THREADS set by the user)")
    return (f"{cores()} cores, {workers} worker(s): {max(1, cores() // workers)} thread(s) each "
            "for torch and InfiniCore's OpenMP")
