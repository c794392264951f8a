"""pytest-benchmark files: reading one (checked, errors naming the file and field), what it
measured (`partition`: device, scale, build), and two of them compared benchmark by
benchmark on the medians of their timed rounds with perfstats.judge (a factor and a
Mann-Whitney test over the rounds). Used by compare.py, the perf gate and the baselines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from conformance.record import RecordError, RunRecord

from .perfstats import judge, median


@dataclass
class PerfChange:
    name: str
    baseline_median_s: float
    run_median_s: float
    ratio: float     # median(run) / median(baseline)
    verdict: str     # slower | faster | same | noise (perfstats.judge)
    p_slower: float | None = None  # one-sided Mann-Whitney over the rounds; None: no rounds
    rounds: tuple[int, int] = (0, 0)  # (run, baseline)



PARTITION = ("device", "scale", "build")


def partition(doc: dict) -> dict[str, str]:
    """What a benchmark file measured: device kind, scale, InfiniCore build (from the
    `infinilm` block conformance/perf adds; "?" where an older file lacks it)."""
    info = doc.get("infinilm") or {}
    scale = info.get("scale")
    device = str(info.get("infini_device") or "?").split(":")[0]
    return {"device": device,
            "scale": str(scale.get("name") if isinstance(scale, dict) else scale or "?"),
            "build": str(info.get("infinicore") or "?")}


def describe(part: dict[str, str]) -> str:
    return f"device {part['device']}, scale {part['scale']}, build {part['build']}"


def load_benchmark(path: str | Path) -> dict:
    """A pytest-benchmark JSON file (`pytest --benchmark-json=FILE`)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as e:
        raise RecordError(f"{p}: cannot be read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise RecordError(f"{p}: not valid JSON: {e.msg} at line {e.lineno}") from None
    _check_benchmark(doc, str(p))
    return doc


def _check_benchmark(doc: object, source: str) -> None:
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise RecordError(f"{source}: field benchmarks: missing or not an array "
                           "(expected pytest-benchmark JSON)")
    for i, b in enumerate(doc["benchmarks"]):
        if not isinstance(b, dict) or not isinstance((b.get("stats") or {}).get("mean"),
                                                     (int, float)):
            raise RecordError(f"{source}: field benchmarks[{i}].stats.mean: missing or not "
                               "a number")


def perf_of(run: RunRecord, run_dir: Path, override: str | Path | None) -> dict | None:
    """Benchmarks for one side: an explicit file, else results.json's `perf`, else
    benchmark.json in the run directory, else none."""
    if override is not None:
        return load_benchmark(override)
    if run.perf is not None:
        _check_benchmark(run.perf, f"{run_dir / 'results.json'} (perf)")
        return run.perf
    if (run_dir / "benchmark.json").is_file():
        return load_benchmark(run_dir / "benchmark.json")
    return None


def rounds_of(doc: dict) -> dict[str, tuple[float, list[float]]]:
    """fullname -> (median, the timed rounds) of each benchmark of a pytest-benchmark file
    (`data` is present in --benchmark-json files; saved storage may lack it)."""
    out = {}
    for b in doc["benchmarks"]:
        stats = b["stats"]
        data = [float(x) for x in stats.get("data") or [] if isinstance(x, (int, float))]
        med = stats.get("median")
        med = float(med) if isinstance(med, (int, float)) else \
            (median(data) if data else float(stats["mean"]))
        out[b.get("fullname") or b["name"]] = (med, data)
    return out


def compare_perf(run: dict, baseline: dict, tolerance: float,
                 alpha: float = 0.05) -> list[PerfChange]:
    """Per benchmark in both files: medians, their ratio, and the verdict of
    perfstats.judge (the factor and a rank test over the rounds)."""
    a, b = rounds_of(run), rounds_of(baseline)
    out = []
    for name in sorted(a.keys() & b.keys()):
        (ma, ra), (mb, rb) = a[name], b[name]
        change = judge(ra, rb, tolerance, alpha, ma, mb)
        out.append(PerfChange(name, mb, ma, change.ratio, change.verdict, change.p_slower,
                              (len(ra), len(rb))))
    return out
