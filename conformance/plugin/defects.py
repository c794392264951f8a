"""Known upstream defects (`known_defects.toml`) as envelopes.

A known defect names the checks it shows in and the *expected* deviation: for an
accuracy or property defect, an envelope that widens the bound of the comparisons it
applies to by exactly what the defect explains; for a crash defect, the crash itself.
Each check still runs: out of its normal bound but inside the envelope it is recorded as
`known_defect`; outside the envelope (a second defect, or a worse one), or failing in
another way than the defect's kind, it fails. Strict: with `strict = "each"` (default) a
listed check in which the defect no longer shows fails as XPASS, so a fix shows up; with
`strict = "any"` the defect must show in at least one of its checks that ran.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

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
    applies_to: tuple[str, ...] = ("*",)
    strict: str = "each"
    derivation: str = ""
    crash: bool = False  # explains a crash of the check (kind "crash", or merged with one)

    def __post_init__(self) -> None:
        if self.kind == "crash":
            object.__setattr__(self, "crash", True)

    def matches(self, nodeid: str) -> bool:
        return any(_matches(p, nodeid) for p in self.checks)

    def applies(self, what: str) -> bool:
        """Does the envelope cover the comparison named `what`?"""
        return self.kind != "crash" and any(_matches(p, what) for p in self.applies_to)

    def ref(self) -> dict:
        return {"id": self.id, "kind": self.kind, "reason": self.reason,
                "evidence": self.evidence}


def _matches(pattern: str, text: str) -> bool:
    """Shell-style '*' wildcards; brackets are literal (they are in parametrized ids)."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, text) is not None


def load(path: Path) -> list[KnownDefect]:
    """Parse and validate; a bad file is a usage error naming the file and the entry."""
    try:
        with open(path, "rb") as f:
            entries = tomllib.load(f).get("defect", [])
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise pytest.UsageError(f"--known-defects {path}: {e}") from None
    out = []
    for i, e in enumerate(entries):
        where = f"{path}: defect {e.get('id', f'#{i}')!r}"
        missing = {"id", "device", "kind", "nodeid", "reason", "evidence"} - set(e)
        if missing:
            raise pytest.UsageError(f"{where} lacks {sorted(missing)}")
        if e["kind"] not in KINDS:
            raise pytest.UsageError(f"{where}: kind {e['kind']!r} is not one of {KINDS}")
        envelope = dict(e.get("envelope", {}))
        unknown = {k for k in envelope if k not in ENVELOPE_KEYS
                   and not k.startswith("floor.")}
        if unknown:
            raise pytest.UsageError(f"{where}: unknown envelope keys {sorted(unknown)}")
        if e["kind"] != "crash" and not envelope:
            raise pytest.UsageError(f"{where}: an {e['kind']} defect needs an envelope (the "
                                    "deviation it explains)")
        strict = e.get("strict", "each")
        if strict not in ("each", "any"):
            raise pytest.UsageError(f"{where}: strict must be 'each' or 'any', got {strict!r}")
        checks = e["nodeid"] if isinstance(e["nodeid"], list) else [e["nodeid"]]
        applies = e.get("applies_to", ["*"])
        out.append(KnownDefect(
            id=e["id"], device=e["device"], kind=e["kind"], checks=tuple(checks),
            reason=e["reason"], evidence=e["evidence"], envelope=envelope,
            applies_to=tuple(applies if isinstance(applies, list) else [applies]),
            strict=strict, derivation=e.get("derivation", "")))
    return out


def active(config: pytest.Config) -> list[KnownDefect]:
    """The defects of the device type under test, loaded once per process."""
    cache = getattr(config, "_infinilm_defects", None)
    if cache is None:
        device_type = config.getoption("--infini-device").split(":")[0]
        cache = [d for d in load(config.getoption("--known-defects"))
                 if d.device in (device_type, "*")]
        config._infinilm_defects = cache
    return cache


def defect_for(config: pytest.Config, nodeid: str) -> KnownDefect | None:
    """The defect covering this check; where several do (an f16 check of a case that has
    a defect of its own on a backend whose f16 conversion has another), one entry whose
    envelope is the union of theirs, so each explains what it explains."""
    found = [d for d in active(config) if d.matches(nodeid)]
    if len(found) <= 1:
        return found[0] if found else None
    return merge(found)


def merge(found: list[KnownDefect]) -> KnownDefect:
    envelope: dict[str, Any] = {}
    for d in found:
        for k, v in d.envelope.items():
            if isinstance(v, bool) or isinstance(v, str):
                envelope.setdefault(k, v)
            else:
                envelope[k] = max(float(v), float(envelope.get(k, v)))
    kinds = [d.kind for d in found]
    kind = next((k for k in kinds if k != "crash"), "crash")
    applies = tuple(dict.fromkeys(p for d in found for p in d.applies_to))
    return KnownDefect(
        id=" + ".join(d.id for d in found), device=found[0].device, kind=kind,
        checks=tuple(p for d in found for p in d.checks),
        reason="; ".join(d.reason for d in found),
        evidence="\n\n".join(d.evidence for d in found), envelope=envelope,
        applies_to=applies, strict="each" if any(d.strict == "each" for d in found) else "any",
        derivation="\n\n".join(d.derivation for d in found if d.derivation),
        crash="crash" in kinds)
