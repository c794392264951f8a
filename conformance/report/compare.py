"""A run against a baseline run: status changes, grown errors, performance changes.

Checks are matched by node id, or, with `ignore_params` (e.g. dtype), by (check, test,
the remaining parameters), which lines up an f32 run with a bf16 run of the same cases.
Only recorded statuses and metrics are compared; nothing is re-judged.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .schema import ResultsError

BAD = ("failed", "crashed", "error")
# Metrics where larger is worse. sqnr/cosine/top-1 are better-larger and left out.
ERROR_METRICS = ("nmse", "max_abs", "mean_abs", "kl", "rel_delta")
# info keys holding transformers' own error, not ours: a change there is not our regression.
REFERENCE_KEYS = ("reference_metrics", "reference_logits", "transformers_same_dtype",
                  "reference_rel_delta", "threshold", "gate_threshold", "tolerance", "gate",
                  "first_divergence")


@dataclass
class StatusChange:
    key: str
    nodeid: str
    baseline: str | None  # None: the check is not in the baseline
    run: str | None       # None: the check is not in the run
    message: str = ""


@dataclass
class Growth:
    key: str
    where: str
    metric: str
    baseline: float
    run: float
    ratio: float


@dataclass
class PerfChange:
    name: str
    baseline_mean_s: float
    run_mean_s: float
    ratio: float
    verdict: str  # "slower", "faster", "same": against the --perf-tolerance band


@dataclass
class Comparison:
    run_id: str
    baseline_id: str
    factor: float
    matched: int
    newly_failing: list[StatusChange] = field(default_factory=list)
    newly_passing: list[StatusChange] = field(default_factory=list)
    other_changes: list[StatusChange] = field(default_factory=list)
    only_in_run: list[StatusChange] = field(default_factory=list)
    only_in_baseline: list[StatusChange] = field(default_factory=list)
    grown: list[Growth] = field(default_factory=list)
    perf: list[PerfChange] | None = None
    perf_tolerance: float = 0.1

    @property
    def exit_code(self) -> int:
        """1 when anything newly fails (including a new check that fails), else 0."""
        return 1 if self.newly_failing else 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["exit_code"] = self.exit_code
        return d


def match_key(record: dict, ignore_params: tuple[str, ...] = ()) -> str:
    if not ignore_params:
        return record["nodeid"]
    params = {k: v for k, v in record["params"].items() if k not in ignore_params}
    return f"{record['check']}::{record['test']}[" + ",".join(
        f"{k}={params[k]}" for k in sorted(params)) + "]"


def metric_values(record: dict) -> dict[tuple[str, str], float]:
    """(where, metric) -> value for every error metric of ours the check recorded."""
    out: dict[tuple[str, str], float] = {}

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in REFERENCE_KEYS:
                    continue
                if k in ERROR_METRICS and isinstance(v, (int, float)) and \
                        not isinstance(v, bool):
                    out[(where, k)] = float(v)
                else:
                    walk(v, f"{where}.{k}" if where else k)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                label = v.get("tensor") or v.get("what") if isinstance(v, dict) else None
                walk(v, f"{where}[{label if label is not None else i}]")

    walk(record["comparisons"], "comparisons")
    walk(record["info"], "info")
    return out


def _index(doc: dict, ignore: tuple[str, ...], side: str) -> dict[str, dict]:
    index: dict[str, dict] = {}
    for r in doc["results"]:
        key = match_key(r, ignore)
        if key in index:
            raise ResultsError(
                f"{side} run {doc['run_id']}: two checks map to {key!r} ({index[key]['nodeid']} "
                f"and {r['nodeid']}); ignore fewer parameters")
        index[key] = r
    return index


def compare_runs(run: dict, baseline: dict, factor: float = 2.0,
                 ignore_params: tuple[str, ...] = (), run_perf: dict | None = None,
                 baseline_perf: dict | None = None, perf_tolerance: float = 0.1) -> Comparison:
    if factor <= 1.0:
        raise ValueError(f"--factor must be > 1, got {factor}")
    a = _index(run, ignore_params, "the")
    b = _index(baseline, ignore_params, "the baseline")
    result = Comparison(run["run_id"], baseline["run_id"], factor,
                        matched=len(a.keys() & b.keys()), perf_tolerance=perf_tolerance)
    for key in sorted(a.keys() | b.keys()):
        r, base = a.get(key), b.get(key)
        change = StatusChange(key, (r or base)["nodeid"], base and base["status"],
                              r and r["status"], (r or {}).get("message", "")[:500])
        if base is None:
            (result.newly_failing if r["status"] in BAD else result.only_in_run).append(change)
            continue
        if r is None:
            result.only_in_baseline.append(change)
            continue
        if r["status"] in BAD and base["status"] not in BAD:
            result.newly_failing.append(change)
        elif r["status"] == "passed" and base["status"] != "passed":
            result.newly_passing.append(change)
        elif r["status"] != base["status"]:
            result.other_changes.append(change)
        mine, theirs = metric_values(r), metric_values(base)
        for k in sorted(mine.keys() & theirs.keys()):
            new, old = mine[k], theirs[k]
            if not (math.isfinite(new) and math.isfinite(old)):
                continue
            ratio = new / old if old > 0 else (math.inf if new > 0 else 1.0)
            if ratio > factor:
                result.grown.append(Growth(key, k[0], k[1], old, new, ratio))
    result.grown.sort(key=lambda g: -g.ratio if math.isfinite(g.ratio) else -1e308)
    if run_perf is not None and baseline_perf is not None:
        result.perf = compare_perf(run_perf, baseline_perf, perf_tolerance)
    return result


def load_benchmark(path: str | Path) -> dict:
    """A pytest-benchmark JSON file (`pytest --benchmark-json=FILE`)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as e:
        raise ResultsError(f"{p}: cannot be read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{p}: not valid JSON: {e.msg} at line {e.lineno}") from None
    _check_benchmark(doc, str(p))
    return doc


def _check_benchmark(doc: object, source: str) -> None:
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise ResultsError(f"{source}: field benchmarks: missing or not an array "
                           "(expected pytest-benchmark JSON)")
    for i, b in enumerate(doc["benchmarks"]):
        if not isinstance(b, dict) or not isinstance((b.get("stats") or {}).get("mean"),
                                                     (int, float)):
            raise ResultsError(f"{source}: field benchmarks[{i}].stats.mean: missing or not "
                               "a number")


def perf_of(doc: dict, run_dir: Path, override: str | Path | None) -> dict | None:
    """Benchmarks for one side: an explicit file, else results.json's `perf`, else
    benchmark.json in the run directory, else none."""
    if override is not None:
        return load_benchmark(override)
    if doc.get("perf") is not None:
        _check_benchmark(doc["perf"], f"{run_dir / 'results.json'} (perf)")
        return doc["perf"]
    if (run_dir / "benchmark.json").is_file():
        return load_benchmark(run_dir / "benchmark.json")
    return None


def compare_perf(run: dict, baseline: dict, tolerance: float) -> list[PerfChange]:
    def means(doc: dict) -> dict[str, float]:
        return {b.get("fullname") or b["name"]: float(b["stats"]["mean"])
                for b in doc["benchmarks"]}

    a, b = means(run), means(baseline)
    out = []
    for name in sorted(a.keys() & b.keys()):
        ratio = a[name] / b[name] if b[name] > 0 else math.inf
        verdict = "slower" if ratio > 1 + tolerance else \
            "faster" if ratio < 1 / (1 + tolerance) else "same"
        out.append(PerfChange(name, b[name], a[name], ratio, verdict))
    return out


def format_text(c: Comparison, limit: int = 40) -> str:
    lines = [f"compare {c.run_id} against baseline {c.baseline_id}: {c.matched} checks matched",
             f"  newly failing: {len(c.newly_failing)}   newly passing: {len(c.newly_passing)}"
             f"   other status changes: {len(c.other_changes)}   only in run: "
             f"{len(c.only_in_run)}   only in baseline: {len(c.only_in_baseline)}   "
             f"errors grown > {c.factor:g}x: {len(c.grown)}"]

    def section(title: str, items: list) -> None:
        if not items:
            return
        lines.append(f"\n{title} ({len(items)}):")
        for ch in items[:limit]:
            lines.append(f"  {ch.baseline or '-':>12} -> {ch.run or '-':<12} {ch.key}")
        if len(items) > limit:
            lines.append(f"  ... {len(items) - limit} more")

    section("NEWLY FAILING", c.newly_failing)
    section("newly passing", c.newly_passing)
    section("other status changes", c.other_changes)
    section("only in run", c.only_in_run)
    section("only in baseline", c.only_in_baseline)
    if c.grown:
        lines.append(f"\nerrors grown by more than {c.factor:g}x ({len(c.grown)}), largest first:")
        for g in c.grown[:limit]:
            lines.append(f"  x{g.ratio:<9.3g} {g.metric:<9} {g.baseline:.3g} -> {g.run:.3g}  "
                         f"{g.key}  {g.where}")
        if len(c.grown) > limit:
            lines.append(f"  ... {len(c.grown) - limit} more")
    if c.perf is not None:
        lines.append(f"\nperformance (mean time, band ±{c.perf_tolerance:.0%}):")
        for p in c.perf:
            lines.append(f"  {p.verdict:<6} x{p.ratio:.3f}  {p.baseline_mean_s * 1e3:.3f} ms -> "
                         f"{p.run_mean_s * 1e3:.3f} ms  {p.name}")
        if not c.perf:
            lines.append("  no benchmark in common")
    lines.append(f"\nexit status {c.exit_code}: " + (
        "something newly fails" if c.exit_code else "nothing newly fails"))
    return "\n".join(lines)
