"""Known upstream defects (`known_defects.toml`) as envelopes, scoped to the builds that
have them.

A known defect names the checks it shows in and the *expected* deviation: for an
accuracy or property defect, an envelope that widens the bound of the comparisons it
applies to by exactly what the defect explains; for a crash defect, the crash itself.
Each check still runs: out of its normal bound but inside the envelope it is recorded as
`known_defect`; outside the envelope (a second defect, or a worse one), or failing in
another way than the defect's kind, it fails. Strict: with `strict = "each"` (default) a
listed check in which the defect no longer shows fails as XPASS, so a fix shows up; with
`strict = "any"` the defect must show in at least one of its checks that ran.

Builds (the rule, also in the file's header): the table lists the builds it has seen,
per device (`[[build]]`), and each entry the builds it was observed on (`builds`).
* On a seen build, an entry applies only where its `builds` name that build, strictly:
  a fix still shows up as XPASS. An entry that does not name it does not apply there
  (that build never had it, or fixed it): its checks are judged by the normal bounds.
* An entry without `builds` (a user's own table) applies to every build, strictly.
* On a build the table has not seen (a vendor's tree, a newer commit), every entry of the
  device applies *unvouched*: inside its envelope a check is `known_defect`, marked as
  observed elsewhere and not verified here; a defect that does not show is a note, never
  an XPASS failure (the table cannot know whether this build has it).

Tables stack (`--known-defects` is repeatable; the shipped table comes first unless
`--no-shipped-defects`): a later table adds entries, and one with the id of an earlier
table's entry replaces it. Each table vouches for the builds it lists: its entries are
selected by its own `[[build]]` list, so a vendor's table that has seen their build applies
their entries strictly there while ours apply unvouched. A build is named by any of the
keys the harness prints for it (`BuildIdentity.keys`): pypi:, git:, sha256: (the source),
exports: (its C API) or libs: (its libraries' bytes).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from .options import KNOWN_DEFECTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KINDS = ("accuracy", "property", "crash")
ENVELOPE_KEYS = {"atol", "rtol", "nmse", "bias", "k", "floor", "max_ulp", "direction",
                 "threshold", "nonfinite", "mismatches"}


@dataclass(frozen=True)
class KnownDefect:
    id: str
    device: str
    kind: str
    checks: tuple[str, ...]
    reason: str
    evidence: str
    envelope: Mapping[str, Any] = field(default_factory=dict)
    # model (fixture name or checkpoint) -> its own envelope, measured on it: the entry
    # then explains the listed models' checks only (a number measured on one model never
    # widens another's bound)
    envelope_by_model: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    applies_to: tuple[str, ...] = ("*",)
    strict: str = "each"
    derivation: str = ""
    crash: bool = False  # explains a crash of the check (kind "crash", or merged with one)
    builds: tuple[str, ...] = ()  # build keys it was observed on (pypi:0.1.0, git:<commit>)
    vouched: bool = True  # False: applied to a build the table has not seen
    parts: tuple[KnownDefect, ...] = ()  # the entries a merged one stands for
    # the table it was read from, named where a fix asks for its removal (a vendor's own
    # table stacked on ours: the entry to remove is in theirs)
    table: str = "known_defects.toml"

    def __post_init__(self) -> None:
        if self.kind == "crash":
            object.__setattr__(self, "crash", True)

    def matches(self, nodeid: str, model: str | None = None) -> bool:
        """Covers the check `nodeid` (of `model`, for an entry with envelopes per model)."""
        if self.envelope_by_model and model not in self.envelope_by_model:
            return False
        return any(_matches(p, nodeid) for p in self.checks)

    def for_model(self, model: str | None) -> KnownDefect:
        """The entry with the envelope measured on `model` (itself without per-model
        envelopes)."""
        if not self.envelope_by_model or model not in self.envelope_by_model:
            return self
        return replace(self, envelope=dict(self.envelope_by_model[model]))

    def applies(self, what: str) -> bool:
        """Does the envelope cover the comparison named `what`?"""
        return self.kind != "crash" and any(_matches(p, what) for p in self.applies_to)

    def envelope_for(self, what: str) -> tuple[dict, str] | None:
        """(envelope, id) for the comparison `what`: of a merged entry, the union of the
        envelopes of only those of its entries that cover `what`, so one entry's wider
        envelope for one output does not widen another output's bound."""
        if not self.parts:
            return (dict(self.envelope), self.id) if self.applies(what) else None
        covering = [d for d in self.parts if d.applies(what)]
        if not covering:
            return None
        if len(covering) == 1:
            return dict(covering[0].envelope), covering[0].id
        return _union(covering), " + ".join(d.id for d in covering)

    def ref(self) -> dict:
        return {"id": self.id, "kind": self.kind, "reason": self.reason,
                "evidence": self.evidence, "vouched": self.vouched,
                "builds": list(self.builds)}


@dataclass(frozen=True)
class SeenBuild:
    """A build the table was checked against: on these devices, every entry that applies
    to it names it in `builds`."""

    key: str
    name: str
    devices: tuple[str, ...]


def _matches(pattern: str, text: str) -> bool:
    """Shell-style '*' wildcards; brackets are literal (they are in parametrized ids)."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, text) is not None


_BUILD_KEY = re.compile(r"pypi:\S+|(git|sha256|exports|libs):[0-9a-f]{7,64}")


def _build_keys(where: str, value: Any) -> tuple[str, ...]:
    keys = value if isinstance(value, list) else [value]
    bad = [k for k in keys if not isinstance(k, str) or not _BUILD_KEY.fullmatch(k)]
    if bad or not keys:
        raise pytest.UsageError(f"{where}: builds must be a list of build keys such as "
                                "'pypi:0.1.0', 'git:2cec6ce6', 'exports:<digest>' or "
                                "'libs:<digest>' (7+ hex digits), got "
                                f"{bad or keys}")
    return tuple(keys)


DEFECT_FIELDS = ("id", "device", "kind", "nodeid", "reason", "evidence", "envelope",
                 "envelope_by_model", "applies_to", "strict", "derivation", "builds")
BUILD_FIELDS = ("key", "name", "devices")
_TEXT_FIELDS = ("id", "device", "kind", "reason", "evidence", "derivation", "strict", "name")


def load_builds(path: Path) -> list[SeenBuild]:
    """The `[[build]]` table: the builds this file was checked against, per device."""
    doc = _read(path)
    out = []
    for i, b in enumerate(doc.get("build", [])):
        where = f"--known-defects {path}: build #{i + 1}"
        missing = {"key", "name", "devices"} - set(b)
        if missing:
            raise pytest.UsageError(f"{where} lacks {sorted(missing)}")
        devices = b["devices"] if isinstance(b["devices"], list) else [b["devices"]]
        out.append(SeenBuild(_build_keys(where, b["key"])[0], str(b["name"]),
                             tuple(str(d) for d in devices)))
    return out


def _read(path: Path) -> dict:
    """The file's TOML, checked for what it may hold: a misspelled section or field is an
    error naming the file and the key, never silently ignored."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a directory, or a pipe that would block
        raise pytest.UsageError(f"--known-defects {path}: not a regular file")
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise pytest.UsageError(f"--known-defects {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise pytest.UsageError(f"--known-defects {path}: not valid TOML: {e}") from None
    _check_shape(path, doc)
    return doc


def _check_shape(path: Path, doc: dict) -> None:
    for section, value in doc.items():
        if section not in ("defect", "build"):
            raise pytest.UsageError(f"--known-defects {path}: [{section}]: no such section "
                                    "(a table holds [[defect]] and [[build]] entries)")
        if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
            raise pytest.UsageError(f"--known-defects {path}: {section}: expected "
                                    f"[[{section}]] entries, got {value!r}"[:300])
    ids: set[str] = set()
    for section, fields in (("defect", DEFECT_FIELDS), ("build", BUILD_FIELDS)):
        for i, e in enumerate(doc.get(section, [])):
            label = repr(e["id"]) if section == "defect" and "id" in e else f"#{i + 1}"
            where = f"--known-defects {path}: {section} {label}"
            for name, value in e.items():
                if name not in fields:
                    raise pytest.UsageError(f"{where}: {name}: no such field (known: "
                                            f"{', '.join(fields)})")
                if name in _TEXT_FIELDS and not (isinstance(value, str) and value.strip()):
                    raise pytest.UsageError(f"{where}: {name} = {value!r}: expected a "
                                            "non-empty string")
                if name in ("nodeid", "applies_to", "devices") and not _texts(value):
                    raise pytest.UsageError(f"{where}: {name} = {value!r}: expected a string "
                                            "or a non-empty list of strings")
                if name == "envelope" and not isinstance(value, dict):
                    raise pytest.UsageError(f"{where}: envelope = {value!r}: expected a table")
                if name == "envelope_by_model" and not (
                        isinstance(value, dict) and value
                        and all(isinstance(v, dict) for v in value.values())):
                    raise pytest.UsageError(f"{where}: envelope_by_model = {value!r}: "
                                            "expected a table of one envelope per model"[:300])
            if section == "defect" and isinstance(e.get("id"), str):
                if e["id"] in ids:
                    raise pytest.UsageError(f"{where}: the id is given twice in this table "
                                            "(a later table replaces an id, not the same one)")
                ids.add(e["id"])


def _texts(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, str) and v.strip() for v in value)


def _check_envelope(where: str, name: str, envelope: dict) -> None:
    """Known keys (`floor.<metric>`, `k.<metric>`: per metric of a calibrated bound), and
    finite numbers >= 0."""
    unknown = {k for k in envelope if k not in ENVELOPE_KEYS
               and not k.startswith(("floor.", "k."))}
    if unknown:
        raise pytest.UsageError(f"{where}: unknown {name} keys {sorted(unknown)}")
    for k, v in envelope.items():
        if k == "direction" and isinstance(v, str):
            continue
        if k == "nonfinite" and isinstance(v, bool):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                not math.isfinite(v) or v < 0:
            raise pytest.UsageError(f"{where}: {name} {k} = {v!r}: expected a finite "
                                    "number >= 0")


def load(path: Path) -> list[KnownDefect]:
    """Parse and validate; a bad file is a usage error naming the file and the entry."""
    entries = _read(path).get("defect", [])
    out = []
    for i, e in enumerate(entries):
        where = f"--known-defects {path}: defect {e.get('id', f'#{i + 1}')!r}"
        missing = {"id", "device", "kind", "nodeid", "reason", "evidence"} - set(e)
        if missing:
            raise pytest.UsageError(f"{where} lacks {sorted(missing)}")
        if e["kind"] not in KINDS:
            raise pytest.UsageError(f"{where}: kind {e['kind']!r} is not one of {KINDS}")
        envelope = dict(e.get("envelope", {}))
        by_model = {str(m): dict(env) for m, env in e.get("envelope_by_model", {}).items()}
        _check_envelope(where, "envelope", envelope)
        for m, env in by_model.items():
            _check_envelope(where, f"envelope_by_model.{m}", env)
        if e["kind"] != "crash" and not envelope and not by_model:
            raise pytest.UsageError(f"{where}: an {e['kind']} defect needs an envelope (the "
                                    "deviation it explains)")
        if envelope and by_model:
            raise pytest.UsageError(f"{where}: give envelope or envelope_by_model, not both "
                                    "(a model without its own envelope is not explained)")
        strict = e.get("strict", "each")
        if strict not in ("each", "any"):
            raise pytest.UsageError(f"{where}: strict must be 'each' or 'any', got {strict!r}")
        checks = e["nodeid"] if isinstance(e["nodeid"], list) else [e["nodeid"]]
        applies = e.get("applies_to", ["*"])
        out.append(KnownDefect(
            id=e["id"], device=e["device"], kind=e["kind"], checks=tuple(checks),
            reason=e["reason"], evidence=e["evidence"], envelope=envelope,
            envelope_by_model=by_model,
            applies_to=tuple(applies if isinstance(applies, list) else [applies]),
            strict=strict, derivation=e.get("derivation", ""),
            builds=_build_keys(where, e["builds"]) if "builds" in e else (),
            table=str(path)))
    return out


def select(entries: list[KnownDefect], seen: list[SeenBuild], identity, device_type: str
           ) -> tuple[list[KnownDefect], SeenBuild | None]:
    """The entries that apply to a build (`identity`: capabilities.BuildIdentity, or None
    when it could not be read) on a device type, by the rule of the module docstring, and
    the seen build it matched (None: unseen, entries unvouched)."""
    of_device = [d for d in entries if d.device in (device_type, "*")]
    anywhere = [d for d in of_device if not d.builds]  # a table about whatever it runs on
    scoped = [d for d in of_device if d.builds]
    match = next((b for b in seen if identity is not None and identity.matches(b.key)
                  and device_type in b.devices), None)
    if match is not None:
        return anywhere + [d for d in scoped if any(identity.matches(k) for k in d.builds)], \
            match
    return anywhere + [replace(d, vouched=False, strict="none") for d in scoped], None


@dataclass(frozen=True)
class InForce:
    """One table of the stack as it applies to this run."""

    path: Path
    shipped: bool
    entries: int  # its entries left after later tables' overrides (any device)
    overrides: tuple[str, ...]  # ids of earlier tables' entries it replaces
    match: SeenBuild | None  # the build of its [[build]] list this run's build is

    def describe(self) -> dict:
        return {"file": str(self.path), "shipped": self.shipped, "entries": self.entries,
                "overrides": list(self.overrides),
                "seen_build": None if self.match is None else self.match.key}


def stack(paths: list[Path], identity, device_type: str
          ) -> tuple[list[KnownDefect], list[InForce]]:
    """The entries that apply from tables stacked in order (see the module docstring), and
    what each table contributes."""
    tables = [(Path(p), load(Path(p)), load_builds(Path(p))) for p in paths]
    owner: dict[str, int] = {}  # id -> index of the table whose entry is in force
    overrides: list[list[str]] = [[] for _ in tables]
    for i, (_, entries, _) in enumerate(tables):
        for d in entries:
            if d.id in owner and owner[d.id] != i:
                overrides[i].append(d.id)
            owner[d.id] = i
    chosen: list[KnownDefect] = []
    in_force = []
    for i, (path, entries, seen) in enumerate(tables):
        mine = [d for d in entries if owner[d.id] == i]
        picked, match = select(mine, seen, identity, device_type)
        chosen += picked
        in_force.append(InForce(path, path.resolve() == KNOWN_DEFECTS, len(mine),
                                tuple(dict.fromkeys(overrides[i])), match))
    return chosen, in_force


def paths_of(config: pytest.Config) -> list[Path]:
    """The tables in force, in stacking order: ours unless --no-shipped-defects, then each
    --known-defects file (one given twice counts once)."""
    given = config.getoption("--known-defects") or []
    if isinstance(given, (str, Path)):
        given = [given]
    paths = ([] if config.getoption("--no-shipped-defects") else [KNOWN_DEFECTS]) + \
        [Path(p) for p in given]
    seen: set[Path] = set()
    out = []
    for p in paths:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def identity_of_build():
    """The build under test's identity, or None when no build can be found (the run
    itself says so)."""
    try:
        from infinilm_models.runtime.capabilities import current_build

        return current_build().identity
    except Exception:  # noqa: BLE001 - no build found: the run itself will say so
        return None


def active(config: pytest.Config) -> list[KnownDefect]:
    """The defects that apply to the build and device type under test, loaded once per
    process (see `stack` and `select`)."""
    cache = getattr(config, "_infinilm_defects", None)
    if cache is None:
        device_type = config.getoption("--infini-device").split(":")[0]
        cache, in_force = stack(paths_of(config), identity_of_build(), device_type)
        if config.getoption("--support"):
            cache = []  # a support probe computes nothing: no defect can show, or is missed
        config._infinilm_defects = cache
        config._infinilm_defect_tables = in_force
    return cache


def in_force(config: pytest.Config) -> list[InForce]:
    active(config)
    return config._infinilm_defect_tables


def _state(t: InForce) -> str:
    if t.match is not None:
        return f"the table has seen this build ({t.match.name}, {t.match.key})"
    return "this build is not one the table has seen"


def scope_note(config: pytest.Config) -> str:
    """One line for the summary and the record: which build each table vouches for."""
    tables = in_force(config)
    if not tables:
        return "known defects: none (--no-shipped-defects and no --known-defects file)"
    unvouched = ("; its entries apply unvouched (observed on other builds, not verified on "
                 "this one), and one that does not show is a note, not a failure")
    identity = identity_of_build()
    names = (f" (a table's [[build]] names it by any of: {', '.join(_short(identity.keys))})"
             if identity is not None else "")
    if len(tables) == 1:
        t = tables[0]
        return f"known defects: {_state(t)}" + ("" if t.match else unvouched + names)
    parts = [f"{t.path.name}{' (shipped)' if t.shipped else ''}: {_state(t)}" for t in tables]
    tail = unvouched.replace("its entries", "an unseen table's entries") + names \
        if any(t.match is None for t in tables) else ""
    return "known defects: " + "; ".join(parts) + tail


def _short(keys) -> list[str]:
    """Keys as printed: digests cut to 16 hex digits (any 7+ digit prefix names them)."""
    return list(dict.fromkeys(k if k.startswith(("pypi:", "git:")) else
                              k[: k.index(":") + 17] for k in keys))


def defect_for(config: pytest.Config, nodeid: str, model: str | None = None
               ) -> KnownDefect | None:
    """The defect covering this check; where several do (an f16 check of a case that has
    a defect of its own on a backend whose f16 conversion has another), one entry whose
    envelope is the union of theirs, so each explains what it explains."""
    found = [d.for_model(model) for d in active(config) if d.matches(nodeid, model)]
    if len(found) <= 1:
        return found[0] if found else None
    return merge(found)


def _union(found: list[KnownDefect]) -> dict[str, Any]:
    envelope: dict[str, Any] = {}
    for d in found:
        for k, v in d.envelope.items():
            if isinstance(v, bool) or isinstance(v, str):
                envelope.setdefault(k, v)
            else:
                envelope[k] = max(float(v), float(envelope.get(k, v)))
    return envelope


def merge(found: list[KnownDefect]) -> KnownDefect:
    envelope = _union(found)
    kinds = [d.kind for d in found]
    kind = next((k for k in kinds if k != "crash"), "crash")
    applies = tuple(dict.fromkeys(p for d in found for p in d.applies_to))
    stricts = {d.strict for d in found}
    strict = next(s for s in ("each", "any", "none") if s in stricts)
    return KnownDefect(
        id=" + ".join(d.id for d in found), device=found[0].device, kind=kind,
        checks=tuple(p for d in found for p in d.checks),
        reason="; ".join(d.reason for d in found),
        evidence="\n\n".join(d.evidence for d in found), envelope=envelope,
        applies_to=applies, strict=strict,
        derivation="\n\n".join(d.derivation for d in found if d.derivation),
        crash="crash" in kinds, builds=tuple(dict.fromkeys(k for d in found for k in d.builds)),
        table=", ".join(dict.fromkeys(d.table for d in found)),
        vouched=all(d.vouched for d in found),
        parts=tuple(p for d in found for p in (d.parts or (d,))))
