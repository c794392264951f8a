"""The record of a check and of a run: one typed definition, read and written only here.

The pytest plugin builds `CheckRecord`s, `results.json` is a `RunRecord` as JSON, and the
report, `compare` and `merge` read it back through `RunRecord.load`, which validates every
field (naming the file and the field of anything wrong). Nothing else parses results.

Statuses of a check:

=============  ================================================================  ========
status         meaning                                                            fails?
=============  ================================================================  ========
passed         every comparison within its bound                                  no
failed         a comparison out of bound (or an unexpected exception)             yes
crashed        the process running it died (signal) or hung (timeout)             yes
not_run        planned but no result: the run stopped, or its worker vanished     yes
known_defect   out of the normal bound, inside a known defect's envelope          no
unsupported    the backend refused the op, dtype or layout                        no
error          setup error, or a skip without an 'unsupported' verdict            yes
=============  ================================================================  ========
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# 3: typed result parts (tensors, amplification, generations, measurements, perf, setup)
# replace the free-form `info`; schema 2 files are still read (compare, merge, report).
SCHEMA_VERSION = 3
READABLE_SCHEMAS = (2, 3)
STATUSES = ("passed", "failed", "crashed", "not_run", "known_defect", "unsupported", "error")
FAILING = frozenset({"failed", "crashed", "not_run", "error"})
VERDICTS = ("pass", "fail")
# Kinds of comparison. accuracy: a result against a reference, within a bound; property:
# a property a standard mandates (IEEE round-to-nearest), failing but shown apart from
# accuracy; finding: a property no standard mandates (determinism, exact zeros), shown
# in the report, never failing the run.
COMPARISON_KINDS = ("accuracy", "property", "finding")


# A named parameter's value (CheckRecord.setup): a JSON scalar.
Scalar = str | int | float | bool | None


class RecordError(ValueError):
    """A results.json (or a record in it) that does not follow the schema."""


@dataclass
class Bound:
    """What a comparison was judged against. `kind`: elementwise (|a-e| <= atol + rtol|e|
    and NMSE <= nmse), calibrated (metric <= k * reference + floor), exact, ulp (at most
    `max_ulp` units in the last place), or limit (metric <= threshold)."""

    kind: str
    source: str = ""
    atol: float | None = None
    rtol: float | None = None
    nmse: float | None = None
    k: float | None = None
    floor: float | None = None
    reference: float | None = None
    threshold: float | None = None
    max_ulp: int | None = None
    metric: str | None = None

    def describe(self) -> str:
        if self.kind == "elementwise":
            s = f"atol={self.atol:g} rtol={self.rtol:g}"
            return s + (f" nmse<={self.nmse:g}" if self.nmse is not None else "")
        if self.kind == "calibrated":
            return (f"{self.metric or 'metric'} <= {self.k:g} x ref {_g(self.reference)} + "
                    f"{self.floor:g} = {_g(self.threshold)}")
        if self.kind == "ulp":
            return f"within {self.max_ulp} ulp"
        if self.kind == "limit":
            return f"{self.metric or 'metric'} <= {_g(self.threshold)}"
        if self.kind == "exact" and self.threshold is not None:
            return f"at most {self.threshold:.0%} of elements may differ"
        if self.kind == "exact" and self.max_ulp is not None:
            return "correctly rounded (0 ulp)" if self.max_ulp == 0 else \
                f"within {self.max_ulp} ulp"
        return self.kind if not self.source else f"{self.kind} ({self.source})"


def _g(v: float | None) -> str:
    return "?" if v is None else f"{v:.3g}"


@dataclass
class Comparison:
    what: str
    passed: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    bound: Bound | None = None
    kind: str = "accuracy"
    # Set when the comparison is out of its bound but inside a known defect's envelope.
    explained_by: str | None = None
    envelope: Bound | None = None

    @property
    def counts_against(self) -> bool:
        """Out of bound and not explained by a known defect: this fails the check."""
        return not self.passed and self.explained_by is None and self.kind != "finding"


@dataclass
class Localization:
    """Where a model-level deviation shows first, finished by the judge: phase, decode step
    (1-based, the step where the tensor deviates most) and the sentence the report prints.
    `isolated`: the sub-module computed wrong on the reference's own input (not only error
    arriving from earlier layers)."""

    phase: str  # "prefill" or "decode"
    tensor: str
    submodule: str
    ops: list[str]
    nmse: float | None
    threshold: float | None
    description: str
    layer: int | None = None
    step: int | None = None
    isolated: bool = False
    steps: int | None = None  # decode steps compared (step is one of 1..steps)
    # What the isolated comparison (this sub-module alone on the golden's own input) says:
    # "starts here" (run, out of bound), "arrives from earlier layers" (run, within bound)
    # or "not measured" (the check has no isolated run of this tensor: no claim either way).
    origin: str = ""


@dataclass
class ErrorPoint:
    """One capture point's error on one run: ours and transformers' (same dtype) NMSE per
    token against the golden, the strict bound, and, for the accumulated run, the gate
    (the failure bound) and whether the strict bound held."""

    nmse: float
    reference_nmse: float
    threshold: float
    passed: bool | None = None
    gate_threshold: float | None = None
    within_strict: bool | None = None


@dataclass
class TensorRow:
    """A captured tensor's errors in one phase (and decode step): accumulated (every
    layer on our own previous output) and isolated (each sub-module on the golden's
    input; None where the point is not isolatable or the check has no isolated run)."""

    phase: str
    tensor: str
    submodule: str
    accumulated: ErrorPoint
    isolated: ErrorPoint | None = None
    layer: int | None = None
    step: int | None = None


@dataclass
class Amplification:
    """Error that grew past the strict bound on its way but stayed within the gate:
    reported, never failing (SmolLM2's layer 1 MLP in bf16)."""

    tensor: str
    submodule: str
    nmse: float
    strict_threshold: float
    layer: int | None = None
    isolated: ErrorPoint | None = None


@dataclass
class Generation:
    """Two sides' greedy tokens, each named, and where they part. `first_divergence`: the
    first step (0-based) where a row differs (or one side is shorter), with the row;
    `margin`: the reference side's top-2 logit margin there; `allowed_margin`: the near tie
    the dtype allows (tolerances.toml [generation_margin])."""

    what: str
    ours: str
    reference: str
    ours_tokens: list[list[int]]
    reference_tokens: list[list[int]]
    passed: bool
    allowed_margin: float
    first_divergence: int | None = None
    row: int | None = None
    margin: float | None = None
    prompt_tokens: int | None = None


@dataclass
class Measurement:
    """Numbers a check reports beside its verdicts, not judged themselves (logits top-1
    agreement, perplexities, cache lengths): `values` of ours and, where measured the
    same way, of the reference."""

    what: str
    values: dict[str, float]
    reference: dict[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass
class PerfSample:
    """A benchmark's own measurements as the check recorded them: the group and the
    implementation timed, numbers and labels."""

    group: str
    impl: str
    values: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Crash:
    """How the process running a check died."""

    signal: str | None
    exit_code: int | None
    timeout: bool = False
    op: str | None = None
    last_call: str | None = None
    traceback: str = ""


@dataclass
class DefectRef:
    id: str
    kind: str
    reason: str
    evidence: str = ""
    # False: the entry was applied to a build the table has not seen (observed on
    # `builds`, not verified on the tested one)
    vouched: bool = True
    builds: list[str] = field(default_factory=list)


@dataclass
class CheckRecord:
    nodeid: str
    check: str
    test: str
    status: str
    params: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    duration_s: float = 0.0
    # The case, typed: what the report and compare group by.
    dtype: str | None = None
    model: str | None = None
    op: str | None = None
    case: str | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    localization: list[Localization] = field(default_factory=list)
    known_defect: DefectRef | None = None
    crash: Crash | None = None
    bundle: str | None = None  # replay bundle, relative to the run directory
    not_run_reason: str | None = None
    # What the check ran with beyond its pytest parameters (prompt source, batch, tensor
    # layouts): named scalars, shown with the case.
    setup: dict[str, Scalar] = field(default_factory=dict)
    tensors: list[TensorRow] = field(default_factory=list)
    amplification: Amplification | None = None
    generations: list[Generation] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    perf: PerfSample | None = None
    # C op names (infiniop<Name>) the check called, including one the build lacks
    infini_ops: list[str] = field(default_factory=list)

    @property
    def findings(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.kind == "finding" and not c.passed]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "record") -> CheckRecord:
        return _build(cls, d, where)


@dataclass
class Coverage:
    """What the build exports against what the run checked (llama.cpp's
    --show-coverage): per exported op, how many checks called it (`op_checks` of them at
    op level); exported ops no check called; ops a check wanted that the build does not
    export; and the checks recorded unsupported, by op."""

    exported: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    op_checks: dict[str, int] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)
    not_exported: list[str] = field(default_factory=list)
    unsupported: dict[str, int] = field(default_factory=dict)
    exports_known: bool = True


@dataclass
class DurationRow:
    """Where a run's time went: the checks of one kind (`by` "check") or of one model
    fixture (`by` "model"), their summed and largest duration (seconds, summed over the
    processes that ran them) and the slowest check."""

    by: str
    name: str
    checks: int
    total_s: float
    max_s: float
    slowest: str = ""


SUPPORT_STATES = ("supported", "partial", "refused", "not_exported", "crashed")


@dataclass
class SupportCell:
    """One op x dtype of a support probe (`--support`, conformance/support.py): of the
    distinct descriptor signatures the checks (`source` "checks") or a model's forward
    (`source` the model) asked for, how many the build refused and with which statuses.
    `state`: supported (none refused), partial, refused (all), not_exported, crashed."""

    op: str
    dtype: str
    state: str
    cases: int = 0
    refused: int = 0
    statuses: list[str] = field(default_factory=list)
    example: str = ""  # one refused signature, as the build was asked for it
    source: str = "checks"


@dataclass
class SupportMatrix:
    """What the build accepts: descriptors created, nothing computed (`--support`)."""

    cells: list[SupportCell] = field(default_factory=list)
    descriptors: int = 0  # distinct signatures probed
    seconds: float = 0.0  # the run's wall time
    models: list[str] = field(default_factory=list)


@dataclass
class RunRecord:
    run_id: str
    verdict: str
    counts: dict[str, int]
    started_at: str
    duration_s: float
    pytest_exit_status: int
    environment: dict[str, Any]
    results: list[CheckRecord]
    planned: int = 0
    schema_version: int = SCHEMA_VERSION
    dtypes: list[str] = field(default_factory=list)
    tolerance_sources: list[str] = field(default_factory=list)
    tolerances: dict[str, Any] = field(default_factory=dict)
    junit_xml: str | None = None
    perf: dict[str, Any] | None = None
    coverage: Coverage | None = None
    durations: list[DurationRow] = field(default_factory=list)
    support: SupportMatrix | None = None  # a --support run's matrix (conformance/support.py)

    @property
    def not_run(self) -> int:
        return self.counts.get("not_run", 0)

    @property
    def build_label(self) -> str:
        """Which InfiniCore ran: the identity's label (results.json's environment)."""
        return build_label(self.environment)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=_jsonable) + "\n"

    @classmethod
    def from_dict(cls, d: Any, source: str = "results.json") -> RunRecord:
        if not isinstance(d, dict):
            raise RecordError(f"{source}: field (top level): expected a JSON object, got "
                              f"{type(d).__name__}")
        if "schema_version" not in d:
            raise RecordError(f"{source}: field schema_version: missing (not a conformance "
                              "results.json?)")
        if d["schema_version"] not in READABLE_SCHEMAS:
            raise RecordError(f"{source}: field schema_version: {d['schema_version']!r} is not "
                              f"supported; this reader knows {list(READABLE_SCHEMAS)}")
        if d["schema_version"] != SCHEMA_VERSION:
            d = upgrade(d, source)
        try:
            run = _build(cls, d, "")
        except RecordError as e:
            raise RecordError(f"{source}: {e}") from None
        if run.verdict not in VERDICTS:
            raise RecordError(f"{source}: field verdict: {run.verdict!r} is not one of "
                              f"{VERDICTS}")
        # The verdict and the counts are derived from the records: a file where they
        # disagree was edited or written by something else, and would mislead its readers.
        counts = summarize(run.results)
        if {k: v for k, v in run.counts.items() if v} != {k: v for k, v in counts.items() if v}:
            raise RecordError(f"{source}: field counts: {run.counts} disagree with the file's "
                              f"own records, which count {counts}")
        if run.verdict != verdict_of(run.results):
            raise RecordError(f"{source}: field verdict: {run.verdict!r} disagrees with the "
                              f"file's own records, which make it {verdict_of(run.results)!r}")
        return run

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        """A run directory (or reports/latest) or a results.json file, validated."""
        p = results_path(path)
        if not p.is_file():
            where = ("run directory has no results.json" if p.name == "results.json"
                     and p.parent.is_dir() else "no such file or run directory")
            raise RecordError(f"{p}: {where}")
        try:
            doc = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise RecordError(f"{p}: not valid JSON: {e.msg} at line {e.lineno} column "
                              f"{e.colno}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise RecordError(f"{p}: cannot be read: {e}") from None
        return cls.from_dict(doc, str(p))


def build_label(env: dict[str, Any]) -> str:
    ident = env.get("infinicore") or {}
    if ident.get("label"):
        return f"{ident['label']} [{ident.get('key', '?')}]"
    version = env.get("infinicore_version")
    return f"InfiniCore {version}" if version else "InfiniCore (unidentified build)"


def duration_table(records: list[CheckRecord]) -> list[DurationRow]:
    """Per check kind and per model, largest total first (`--durations`, grouped)."""
    rows = []
    for by, key in (("check", lambda r: r.check), ("model", lambda r: r.model)):
        groups: dict[str, list[CheckRecord]] = {}
        for r in records:
            name = key(r)
            if name:
                groups.setdefault(name, []).append(r)
        for name, recs in groups.items():
            slow = max(recs, key=lambda r: r.duration_s)
            rows.append(DurationRow(by, name, len(recs), round(sum(r.duration_s for r in recs), 2),
                                    round(slow.duration_s, 2), slow.nodeid))
    return sorted(rows, key=lambda d: (d.by != "check", -d.total_s))


def results_path(path: str | Path) -> Path:
    p = Path(path)
    return p / "results.json" if p.is_dir() else p


def summarize(records: list[CheckRecord]) -> dict[str, int]:
    counts = {s: 0 for s in STATUSES}
    for r in records:
        counts[r.status] += 1
    return counts


def verdict_of(records: list[CheckRecord]) -> str:
    """fail when any check failed, crashed, did not run or errored, or none ran."""
    if not records or any(r.status in FAILING for r in records):
        return "fail"
    return "pass"


def _jsonable(o: Any) -> Any:
    if isinstance(o, float):
        return repr(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


# -- older schemas --------------------------------------------------------------------------


def upgrade(doc: dict, source: str) -> dict:
    """A schema 2 results.json as schema 3: each record's free-form `info` becomes its
    typed parts where its layout is the one schema 2 wrote (per-tensor rows, scalars as
    setup), and the rest is dropped: compare and merge read statuses and comparisons,
    which did not change."""
    doc = dict(doc)
    results = doc.get("results")
    if isinstance(results, list):
        doc["results"] = [_upgrade_record(r) if isinstance(r, dict) else r for r in results]
    doc["schema_version"] = SCHEMA_VERSION
    return doc


def _upgrade_record(r: dict) -> dict:
    r = dict(r)
    info = r.pop("info", None)
    if not isinstance(info, dict):
        return r
    setup = {str(k): v for k, v in info.items()
             if v is None or isinstance(v, (str, int, float, bool))}
    if setup:
        r["setup"] = {**setup, **(r.get("setup") or {})}
    rows = []
    for x in info.get("per_tensor") or []:
        try:
            rows.append(_build(TensorRow, {
                "phase": x.get("phase") if x.get("phase") in ("prefill", "decode")
                else "prefill",
                "tensor": str(x["tensor"]), "submodule": str(x.get("submodule") or ""),
                "layer": x.get("layer"), "step": x.get("step"),
                "accumulated": _point(x["accumulated"]),
                "isolated": _point(x["isolated"]) if isinstance(x.get("isolated"), dict)
                else None}, "per_tensor"))
        except (RecordError, KeyError, TypeError, AttributeError):
            rows = []
            break
    if rows and not r.get("tensors"):
        r["tensors"] = [asdict(x) for x in rows]
    return r


def _point(d: dict) -> dict:
    return {k: d[k] for k in ("nmse", "reference_nmse", "threshold", "passed",
                              "gate_threshold", "within_strict") if k in d}


# -- validation: every dataclass above is built field by field with type checks ----------

_SCALARS = {"str": str, "int": int, "float": (int, float), "bool": bool}
_NESTED = {"Bound": Bound, "Comparison": Comparison, "Localization": Localization,
           "Crash": Crash, "DefectRef": DefectRef, "CheckRecord": CheckRecord,
           "Coverage": Coverage, "DurationRow": DurationRow, "ErrorPoint": ErrorPoint,
           "TensorRow": TensorRow, "Amplification": Amplification,
           "Generation": Generation, "Measurement": Measurement, "PerfSample": PerfSample,
           "SupportCell": SupportCell, "SupportMatrix": SupportMatrix}
_ALLOWED = {
    (CheckRecord, "status"): STATUSES,
    (Comparison, "kind"): COMPARISON_KINDS,
    (Localization, "phase"): ("prefill", "decode"),
    (TensorRow, "phase"): ("prefill", "decode"),
    (Localization, "origin"): ("", "starts here", "arrives from earlier layers",
                               "not measured"),
    (SupportCell, "state"): SUPPORT_STATES,
}


def _build(cls: type, d: Any, where: str) -> Any:
    prefix = f"{where}." if where else ""
    if not isinstance(d, dict):
        raise RecordError(f"field {where or '(top level)'}: expected an object, got "
                          f"{type(d).__name__}")
    kwargs = {}
    for f in fields(cls):
        name = prefix + f.name
        if f.name not in d:
            if f.default is MISSING and f.default_factory is MISSING:
                raise RecordError(f"field {name}: missing")
            continue  # optional: the dataclass default applies
        kwargs[f.name] = _convert(f.type, d[f.name], name)
        allowed = _ALLOWED.get((cls, f.name))
        if allowed is not None and kwargs[f.name] not in allowed:
            raise RecordError(f"field {name}: {kwargs[f.name]!r} is not one of {allowed}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without default that was absent
        raise RecordError(f"field {where or '(top level)'}: {e}") from None


def _convert(annotation: str, value: Any, name: str) -> Any:
    ann = annotation.replace(" ", "")
    optional = ann.endswith("|None")
    base = ann.removesuffix("|None")
    if value is None:
        if optional or base == "Scalar":  # a Scalar may be null (a sweep's batch None)
            return None
        raise RecordError(f"field {name}: null where {base} is required")
    if base in _NESTED:
        return _build(_NESTED[base], value, name)
    if base.startswith("list["):
        if not isinstance(value, list):
            raise RecordError(f"field {name}: expected an array, got {type(value).__name__}")
        inner = base[5:-1]
        return [_convert(inner, v, f"{name}[{i}]") for i, v in enumerate(value)]
    if base.startswith("dict["):
        if not isinstance(value, dict):
            raise RecordError(f"field {name}: expected an object, got {type(value).__name__}")
        inner = base[5:-1].partition(",")[2]
        if inner == "Any":
            return value
        return {str(k): _convert(inner, v, f"{name}.{k}") for k, v in value.items()}
    if base == "Scalar":
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise RecordError(f"field {name}: expected a string, number or boolean, got "
                              f"{type(value).__name__} {_short(value)}")
        return value
    kind = _SCALARS.get(base)
    if kind is None:
        return value  # Any
    # bool is an int in Python; a count or a status code must not be true/false.
    if not isinstance(value, kind) or (isinstance(value, bool) and base != "bool"):
        raise RecordError(f"field {name}: expected {base}, got {type(value).__name__} "
                          f"{_short(value)}")
    if base == "float" and isinstance(value, float) and math.isnan(value):
        return value
    return float(value) if base == "float" else value


def _short(value: object) -> str:
    s = repr(value)
    return s if len(s) <= 60 else s[:57] + "..."


__all__ = [
    "Amplification", "Bound", "CheckRecord", "Comparison", "Coverage", "Crash", "DefectRef",
    "DurationRow", "ErrorPoint", "FAILING", "Generation", "Localization", "Measurement",
    "PerfSample", "RecordError", "RunRecord", "SCHEMA_VERSION", "STATUSES", "SUPPORT_STATES",
    "Scalar", "SupportCell", "SupportMatrix", "TensorRow", "build_label", "results_path",
    "summarize", "verdict_of",
]
