"""The performance gate holds: benchmarks say what ran and are stored apart by device,
scale and build; the baseline is pinned, so a planted 30% slowdown fails every run until
the baseline is moved on purpose, while the same run twice passes; a crashing kernel under
conformance/perf is one crashed benchmark. Real timed runs of one InfiniCore benchmark in
inner pytest processes, timed on the process's CPU clock (`time.process_time`), which a
shared machine's descheduling does not reach."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.report.cli import main
from conformance.report.perfstats import _u_statistic, judge, mann_whitney_greater

ROOT = Path(__file__).resolve().parents[2]
BENCH = ("conformance/perf/test_perf_ops.py", "-k", "kv_proj-prefill32-b1 and infinicore")
SLOW = ("-p", "conformance.selftest.perf_plants", "--slowdown", "gemm=0.3")


def bench_run(reports: Path, *args: str, expect: int = 0) -> Path:
    """One timed run (cpu scale, f32, one thread); returns its run directory."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_XDIST_WORKER", "INFINILM_JOB", "OMP_NUM_THREADS")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])]),
               INFINILM_THREADS="1", INFINILM_MACHINE_ID="selftest")
    before = set(reports.glob("2*")) if reports.is_dir() else set()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
         "-p", "no:xdist", "-q", "--infini-device", "cpu", "--dtype", "f32",
         f"--report-dir={reports}", "--benchmark-only", "--benchmark-enable",
         "--benchmark-timer=time.process_time", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, f"inner pytest exited {proc.returncode}:\n" \
                                      f"{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    (new,) = set(reports.glob("2*")) - before
    return new


def gate(run: Path, store: Path, *extra: str) -> int:
    return main(["compare", str(run), "--baseline", "last-green", "--baseline-store",
                 str(store), "--suite", "perfgate", *extra])


# -- the statistics -------------------------------------------------------------------------


def _brute_force_p(x: list[float], y: list[float]) -> float:
    """P(U >= observed) by enumerating every split of the pooled values."""
    pooled, n = x + y, len(x)

    def u(a, b):
        return sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in a for q in b)

    observed = u(x, y)
    hits = total = 0
    for pick in itertools.combinations(range(len(pooled)), n):
        a = [pooled[i] for i in pick]
        b = [pooled[i] for i in range(len(pooled)) if i not in pick]
        hits += u(a, b) >= observed - 1e-12
        total += 1
    return hits / total


@pytest.mark.parametrize(("x", "y"), [
    ([4.0, 5.0, 6.0], [1.0, 2.0, 3.0]),
    ([1.0, 5.0, 6.0, 7.5], [2.0, 3.0, 4.0]),
    ([2.5, 3.5, 1.2, 9.0, 4.4], [1.1, 2.2, 3.3, 4.4 + 1e-3, 0.5, 0.7]),
])
def test_mann_whitney_exact_tail_matches_enumeration(x, y):
    assert mann_whitney_greater(x, y) == pytest.approx(_brute_force_p(x, y))


def test_u_from_midranks_is_the_pairwise_count_ties_included():
    """The rank-sum U (perfstats: O(n log n), for benchmarks of tens of thousands of
    rounds) is the definition's pairwise count, ties one half, on samples full of ties."""
    rng = random.Random(7)
    for _ in range(200):
        x = [rng.choice([1.0, 2.0, 2.5, 3.0, rng.random()]) for _ in range(rng.randint(1, 25))]
        y = [rng.choice([1.0, 2.0, 3.0, rng.random()]) for _ in range(rng.randint(1, 25))]
        pairs = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in x for b in y)
        assert _u_statistic(x, y) == pytest.approx(pairs, abs=1e-9), (x, y)


def test_judge_needs_both_the_factor_and_the_rounds():
    base = [1.00, 1.02, 0.99, 1.01, 1.03, 0.98, 1.00, 1.01]
    assert judge(base, base).verdict == "same"
    assert judge([v * 1.3 for v in base], base).verdict == "slower"
    assert judge([v / 1.3 for v in base], base).verdict == "faster"
    # a median 20% up, but the rounds overlap all over: noise, not a regression
    wide = [0.6, 1.9, 0.7, 1.8, 1.2, 1.25, 0.65, 1.85]
    change = judge(wide, base)
    assert change.ratio > 1.1 and change.verdict == "noise"
    # 5% slower and cleanly separated: inside the factor, not a regression
    assert judge([v * 1.05 + 0.05 for v in base], base).verdict == "same"


# -- real runs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, pytest-benchmark storage) of one timed run, saved."""
    tmp = tmp_path_factory.mktemp("perf-gate")
    storage = tmp / "benchmarks"
    return bench_run(tmp / "reports", *BENCH, f"--benchmark-storage=file://{storage}",
                     "--benchmark-autosave"), storage


def test_benchmarks_say_what_ran_and_are_stored_apart(base_run, tmp_path, capsys):
    run, storage = base_run
    doc = json.loads((run / "benchmark.json").read_text())
    results = json.loads((run / "results.json").read_text())
    build = results["environment"]["infinicore"]["key"]
    info = doc["machine_info"]["infinilm"]
    assert info["device_kind"] == "cpu" and info["infinicore"] == build
    assert info["scale"] == "cpu" and info["machine_id"] == "selftest"
    assert info["device_name"] and info["torch"] and info["transformers"]
    assert "cuda" in info
    assert doc["infinilm"]["infinicore"] == build and doc["infinilm"]["scale"]["name"] == "cpu"
    (b,) = doc["benchmarks"]
    assert b["fullname"].endswith("[kv_proj-prefill32-b1-f32-infinicore]@cpu")
    assert b["extra_info"]["infinicore"] == build
    assert b["extra_info"]["device_kind"] == "cpu" and b["extra_info"]["scale"] == "cpu"
    assert len(b["stats"]["data"]) == b["stats"]["rounds"] >= 3
    # pytest-benchmark's own storage: one folder per device-scale-build
    (part,) = [p.name for p in storage.iterdir()]
    assert part.startswith("cpu-cpu-") and part.endswith(build.split(":")[0] + "-" +
                                                           build.split(":")[1][:12])
    assert list((storage / part).rglob("0001_*.json"))
    # another scale (or device, or build) is never compared with this one
    other = tmp_path / "other.json"
    doc["infinilm"]["scale"]["name"] = "full"
    other.write_text(json.dumps(doc))
    assert main(["compare", str(run), str(run), "--baseline-benchmark", str(other)]) == 0
    out = capsys.readouterr().out
    assert "benchmarks not compared" in out and "scale full" in out


def test_pinned_gate_fails_a_planted_slowdown_every_time_and_passes_noise(base_run, tmp_path,
                                                                          capsys):
    reports, store = tmp_path / "reports", tmp_path / "store"
    base = base_run[0]
    assert gate(base, store) == 0  # an empty store: pinned and recorded
    assert "pinned this run's 1 benchmarks" in capsys.readouterr().out
    same = bench_run(reports, *BENCH)
    assert gate(same, store) == 0, capsys.readouterr().out  # the same run again: noise only
    print(capsys.readouterr().out)
    for attempt in range(2):  # planted 30% slower: fails, and again: the baseline held
        slow = bench_run(reports, *BENCH, *SLOW)
        assert gate(slow, store) == 1, f"attempt {attempt}"
        out = capsys.readouterr().out
        print(out)
        assert "1 slower" in out and "baseline pin" in out, out
        pinned = json.loads(next(store.rglob("pinned-cpu/meta.json")).read_text())
        assert pinned["run_id"] == base.name
    history = [json.loads(line) for line in next(store.rglob("history.jsonl")).read_text()
               .splitlines()]
    assert [h["green"] for h in history] == [True, True, False, False]
    verdicts = [next(iter(h["benchmarks"].values())).get("verdict") for h in history]
    assert verdicts[2:] == ["slower", "slower"]
    # moved on purpose: the slower run becomes the baseline, and then it passes
    assert main(["baseline", "pin", str(slow), "--baseline-store", str(store),
                 "--suite", "perfgate"]) == 0
    assert gate(slow, store, "--no-record") == 0


def test_a_crashing_kernel_is_one_crashed_benchmark(tmp_path):
    """Timed benchmarks run supervised: the batched gemm of attn_scores segfaults (a
    planted backend), that benchmark is crashed, kv_proj still runs and is saved."""
    reports = tmp_path / "reports"
    run = bench_run(reports, "conformance/perf/test_perf_ops.py", "-k",
                    "(attn_scores or kv_proj) and prefill32-b1 and infinicore",
                    "-p", "conformance.selftest.plants", "--plant", "gemm_segfault_batched",
                    expect=1)
    results = json.loads((run / "results.json").read_text())
    status = {r["nodeid"].split("[")[1]: r["status"] for r in results["results"]}
    assert status == {"attn_scores-prefill32-b1-f32-infinicore]": "crashed",
                      "kv_proj-prefill32-b1-f32-infinicore]": "passed"}
    crashed = next(r for r in results["results"] if r["status"] == "crashed")
    assert crashed["crash"]["signal"] == "SIGSEGV"
    names = [b["name"] for b in json.loads((run / "benchmark.json").read_text())["benchmarks"]]
    assert names == ["test_perf_op[kv_proj-prefill32-b1-f32-infinicore]@cpu"]
