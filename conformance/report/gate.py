"""`compare RUN --baseline last-green`: a run against the last green run of its key in the
baseline store (baselines.py), its benchmarks against the pinned performance baseline, and
the store brought up to date.

* No green run stored yet: a green run is recorded as the baseline (and its benchmarks
  pinned) and passes, saying so; a red run fails and is not recorded.
* Otherwise the run is compared (compare.py): newly failing checks, errors grown past the
  factor (failing with --fail-on-growth), benchmarks slower than the pinned ones (median
  over the factor and a rank test). A clean, green run becomes the new last green run; the
  pinned benchmarks stay where they are (they move with `baseline pin`).
* Every compared run adds a history line (bench-history draws them), green or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from conformance.record import RunRecord, results_path

from . import baselines
from .benchfiles import partition, perf_of
from .compare import Comparison, compare_runs
from .comparetext import format_text


@dataclass
class GateResult:
    run_id: str
    key: baselines.Key
    exit_code: int
    lines: list[str] = field(default_factory=list)
    comparison: Comparison | None = None


def gate_run(run_path: str | Path, store: Path, *, suite: str | None = None,
             factor: float = 2.0, fail_on_growth: bool = False, perf_tolerance: float = 0.1,
             perf_alpha: float = 0.05, benchmark: str | None = None,
             baseline_benchmark: str | None = None, record: bool = True,
             ignore_params: tuple[str, ...] = (), limit: int = 40) -> GateResult:
    src = results_path(run_path)
    run = RunRecord.load(src)
    run_dir = src.parent
    key = baselines.key_of(run, suite)
    run_perf = perf_of(run, run_dir, benchmark)
    scale = partition(run_perf)["scale"] if run_perf is not None else None
    out = GateResult(run.run_id, key, 0)
    say = out.lines.append
    say(f"baseline store {store}: {key.describe()}")

    pinned_dir = baselines.pinned(store, key, scale) if scale else None
    if baseline_benchmark is not None:
        from .benchfiles import load_benchmark

        base_perf, pinned_label = load_benchmark(baseline_benchmark), baseline_benchmark
    elif pinned_dir is not None:
        base_perf = perf_of_file(pinned_dir / "benchmark.json")
        pinned_label = baselines.read_meta(pinned_dir).get("run_id", str(pinned_dir))
    else:
        base_perf, pinned_label = None, None

    green_dir = baselines.last_green(store, key)
    verdicts: dict[str, dict] = {}
    if green_dir is None:
        if run.verdict == "pass":
            out.exit_code = 0
            say(f"no baseline yet: run {run.run_id} (green) is recorded as the baseline"
                + ("" if record else " (not: --no-record)") + "; exit status 0")
        else:
            out.exit_code = 1
            say(f"no baseline yet, and run {run.run_id} is red (verdict {run.verdict}, "
                f"{_failing(run)}): not recorded; exit status 1")
        baseline_id = None
    else:
        base = RunRecord.load(green_dir / "results.json")
        baseline_id = base.run_id
        say(f"last green run: {base.run_id} (commit {base.environment.get('git_commit')})"
            + (f"; benchmarks against pinned run {pinned_label}" if pinned_label else ""))
        c = compare_runs(run, base, factor, ignore_params, run_perf, base_perf, perf_tolerance,
                         perf_alpha)
        out.comparison = c
        for p in c.perf or []:
            verdicts[p.name] = {"verdict": p.verdict, "ratio": p.ratio, "p_slower": p.p_slower}
        code = c.exit_code
        if fail_on_growth and c.grown:
            code = 1
        if run.verdict != "pass":
            code = 1
        out.exit_code = code
        say(format_text(c, limit))
        if c.grown and fail_on_growth:
            say(f"FAIL: {len(c.grown)} error metric(s) grew by more than {factor:g}x "
                "(--fail-on-growth)")
        if run.verdict != "pass":
            say(f"FAIL: run {run.run_id} is red ({_failing(run)})")
    green = out.exit_code == 0 and run.verdict == "pass"
    if record:
        if green:
            baselines.record_green(store, key, run, run_dir, run_perf)
            if green_dir is not None:
                say(f"recorded run {run.run_id} as the last green run")
        if run_perf is not None and pinned_dir is None and baseline_benchmark is None:
            if green:
                baselines.pin(store, key, run, run_dir, run_perf, scale)
                say(f"no pinned benchmarks at scale {scale} yet: pinned this run's "
                    f"{len(run_perf['benchmarks'])} benchmarks")
        elif run_perf is not None and not green and any(
                v["verdict"] == "slower" for v in verdicts.values()):
            say("the pinned benchmarks stay: every run fails until this is fixed or the "
                f"baseline is moved on purpose: infinilm-conformance baseline pin {run_dir}")
        baselines.append_history(store, key, baselines.history_entry(
            run, run_dir, key, run_perf, verdicts, green, baseline_id, pinned_label))
    return out


def perf_of_file(path: Path) -> dict:
    from .benchfiles import load_benchmark

    return load_benchmark(path)


def _failing(run: RunRecord) -> str:
    bad = {s: n for s, n in run.counts.items() if n and s in ("failed", "crashed", "not_run",
                                                              "error")}
    return ", ".join(f"{n} {s}" for s, n in bad.items()) or "no checks"
