"""A run against a baseline run: status changes, grown errors, performance changes.

Both runs are read through `RunRecord.load`. Checks are matched by node id, or, with
`ignore_params` (e.g. dtype), by (check, test, the remaining parameters): the typed case
(dtype, model, op, case) and `params` of every record, crashed and not-run ones included,
which lines up an f32 run with a bf16 run of the same cases. Only recorded statuses and
the comparisons' own metrics are compared; nothing is re-judged.

Benchmarks (pytest-benchmark JSON: results.json's `perf`, else RUN/benchmark.json) are
compared on the medians of their timed rounds (benchfiles.py); a slower benchmark fails the
comparison. Benchmark files of a different device, scale or InfiniCore build are not
compared (`partition`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from conformance.policy import lines as policy_lines
from conformance.policy import verdict_text
from conformance.record import FAILING, CheckRecord, RecordError, RunRecord

from .benchfiles import PerfChange, compare_perf, describe, partition

# Metrics where larger is worse. sqnr/cosine/top-1 are better-larger and left out;
# reference_* metrics are transformers' own error, not ours, and never compared.
ERROR_METRICS = ("nmse", "max_abs", "mean_abs", "max_ulp", "kl", "rel_delta")
# A parameter's other names: --ignore-param model also ignores the model_name parameter.
ALIASES = {"model": ("model", "model_name"), "model_name": ("model", "model_name")}
TYPED = ("dtype", "model", "op", "case")


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
class Side:
    run_id: str
    verdict: str
    planned: int
    counts: dict[str, int]
    build: str = ""  # which InfiniCore: RunRecord.build_label
    verdict_text: str = ""  # PASS, or PASS (with N loosened bounds: ...)
    policy: list[str] = field(default_factory=list)  # the policy files in force

    @classmethod
    def of(cls, run: RunRecord) -> Side:
        return cls(run.run_id, run.verdict, max(run.planned, len(run.results)), run.counts,
                   run.build_label, verdict_text(run.verdict, run.environment),
                   policy_lines(run.environment.get("policy")))


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
    perf_alpha: float = 0.05
    # why the benchmarks were not compared (different device, scale or build), if so
    perf_note: str = ""
    run: Side | None = None
    baseline: Side | None = None

    total: int = 0  # checks in either run
    # "digest" where both runs recorded their checkpoints' digests, else "name" (a record
    # written before digests were recorded names its models only).
    models_matched_by: str = "digest"

    @property
    def disjoint(self) -> bool:
        """Nothing matched although both runs hold checks: they tested different things."""
        return self.matched == 0 and self.total > 0

    @property
    def slower(self) -> list[PerfChange]:
        return [p for p in self.perf or [] if p.verdict == "slower"]

    @property
    def exit_code(self) -> int:
        """1 when anything newly fails (including a new check that fails, or one that
        did not run), when a benchmark is slower, or when no check matched at all."""
        return 1 if self.newly_failing or self.disjoint or self.slower else 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["exit_code"] = self.exit_code
        return d


def identity(record: CheckRecord) -> dict[str, str]:
    """The case of a check as name -> value: its params, and the typed fields where
    neither the params (a model is `model_name` there) nor the check name say them."""
    ident = {k: str(v) for k, v in record.params.items()}
    for name in TYPED:
        value = getattr(record, name)
        if value is None or any(a in ident for a in ALIASES.get(name, (name,))):
            continue
        if name == "op" and record.check == f"op_{value}":
            continue  # the check already says it
        ident[name] = str(value)
    return ident


def match_key(record: CheckRecord, ignore_params: tuple[str, ...] = (),
              models: dict[str, str] | None = None) -> str:
    """How a check is matched across runs: its node id, with the model named by its
    checkpoint's digest where the run recorded it (`models`: name -> digest)."""
    digest = (models or {}).get(record.model or "")
    if not ignore_params:
        if digest and record.model:
            head, sep, tail = record.nodeid.partition("[")
            return head + sep + tail.replace(record.model, f"sha256:{digest[:16]}", 1)
        return record.nodeid
    if digest:
        record = CheckRecord(**{**record.__dict__,
                                "params": {**record.params, "model_name": f"sha256:{digest[:16]}"}})
    ignored = {a for p in ignore_params for a in ALIASES.get(p, (p,))}
    ident = {k: v for k, v in identity(record).items() if k not in ignored}
    return f"{record.check}::{record.test}[" + ",".join(
        f"{k}={ident[k]}" for k in sorted(ident)) + "]"


def metric_values(record: CheckRecord) -> dict[tuple[str, str], float]:
    """(comparison, metric) -> value for every error metric of ours the check's
    comparisons recorded (a comparison made twice under one name is numbered)."""
    out: dict[tuple[str, str], float] = {}
    seen: dict[str, int] = {}
    for c in record.comparisons:
        n = seen.get(c.what, 0)
        seen[c.what] = n + 1
        where = c.what if n == 0 else f"{c.what} #{n + 1}"
        for k in ERROR_METRICS:
            v = c.metrics.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[(where, k)] = float(v)
    return out


def _digests(run: RunRecord) -> dict[str, str]:
    """Model name -> checkpoint digest, as the run recorded them ({} for older records)."""
    return {name: m["digest"] for name, m in (run.environment.get("models") or {}).items()
            if isinstance(m, dict) and m.get("digest")}


def _index(run: RunRecord, ignore: tuple[str, ...], side: str,
           models: dict[str, str]) -> dict[str, CheckRecord]:
    index: dict[str, CheckRecord] = {}
    for r in run.results:
        key = match_key(r, ignore, models)
        if key in index:
            raise RecordError(
                f"{side} run {run.run_id}: two checks map to {key!r} ({index[key].nodeid} "
                f"and {r.nodeid}); ignore fewer parameters")
        index[key] = r
    return index


def _message(r: CheckRecord) -> str:
    if r.status == "not_run" and r.not_run_reason:
        return f"not run: {r.not_run_reason}"[:500]
    return r.message[:500]


def compare_runs(run: RunRecord, baseline: RunRecord, factor: float = 2.0,
                 ignore_params: tuple[str, ...] = (), run_perf: dict | None = None,
                 baseline_perf: dict | None = None, perf_tolerance: float = 0.1,
                 perf_alpha: float = 0.05, perf_any_partition: bool = False) -> Comparison:
    if factor <= 1.0:
        raise ValueError(f"--factor must be > 1, got {factor}")
    # Digests on one side only would match nothing: then both sides match by model name.
    run_models, base_models = _digests(run), _digests(baseline)
    by_digest = bool(run_models) and bool(base_models)
    if not by_digest:
        run_models = base_models = {}
    a = _index(run, ignore_params, "the", run_models)
    b = _index(baseline, ignore_params, "the baseline", base_models)
    result = Comparison(run.run_id, baseline.run_id, factor,
                        matched=len(a.keys() & b.keys()), total=len(a.keys() | b.keys()),
                        perf_tolerance=perf_tolerance, perf_alpha=perf_alpha,
                        run=Side.of(run), baseline=Side.of(baseline),
                        models_matched_by="digest" if by_digest else "name")
    for key in sorted(a.keys() | b.keys()):
        r, base = a.get(key), b.get(key)
        change = StatusChange(key, (r or base).nodeid, base.status if base else None,
                              r.status if r else None, _message(r) if r else "")
        if base is None:
            (result.newly_failing if r.status in FAILING else result.only_in_run).append(change)
            continue
        if r is None:
            result.only_in_baseline.append(change)
            continue
        if r.status in FAILING and base.status not in FAILING:
            result.newly_failing.append(change)
        elif r.status == "passed" and base.status != "passed":
            result.newly_passing.append(change)
        elif r.status != base.status:
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
        a, b = partition(run_perf), partition(baseline_perf)
        if a != b and not perf_any_partition:
            result.perf_note = (f"benchmarks not compared: the run's are {describe(a)}, the "
                                f"baseline's {describe(b)} (--perf-any-partition compares "
                                "them anyway)")
        else:
            if a != b:
                result.perf_note = f"benchmarks of {describe(a)} against {describe(b)}"
            result.perf = compare_perf(run_perf, baseline_perf, perf_tolerance, perf_alpha)
    return result
