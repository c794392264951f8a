"""The policy a run was judged by, and how it differs from ours: every tolerance file and
known-defects table in force, and the bounds an overlay loosens.

A vendor may judge their backend by their own overlay (`--tolerances`) and their own
defect tables (`--known-defects`, stacked on ours). That is their right, and it must
show: the console banner, the report, `infinilm-conformance merge`'s scoreboard and
`compare`'s header list each file in force, and a run in which any bound is looser than
the shipped tolerances.toml never says a plain PASS (it says "PASS (with 3 loosened bounds:
my.toml)"). What is shown is stored in results.json's `environment["policy"]`, so every
reader of the record shows the same thing without re-reading the files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .judge import DEFAULT_TOLERANCES, UNIT_ROUNDOFF, TolerancePolicy

# Every field of a tolerance entry is an upper bound: larger is looser.
BOUND_FIELDS = ("atol", "rtol", "nmse", "bias", "k", "floor")


def _default_bias(dtype: str) -> float:
    """The scale-bias floor the judge uses when an entry has no `bias` (judge.bias_limit)."""
    u = UNIT_ROUNDOFF.get(dtype, UNIT_ROUNDOFF["f32"])
    return max(u / 4, 64 * UNIT_ROUNDOFF["f32"])


def compare_tables(shipped: Mapping[str, Any], merged: Mapping[str, Any]
                   ) -> tuple[list[str], list[str]]:
    """(loosened, tightened) bounds of `merged` against `shipped`, one text per bound:
    "gemm.f32.atol 0.0001 -> 0.001"; a bound the overlay drops (an entry without the
    shipped `nmse`) is loosened ("-> none")."""
    loosened, tightened = [], []
    for check in sorted(merged):
        for dtype in sorted(merged[check]):
            new, old = merged[check][dtype], shipped.get(check, {}).get(dtype, {})
            if new == old:
                continue
            for name in BOUND_FIELDS:
                if name not in new and name not in old:
                    continue
                was = old.get(name, _default_bias(dtype) if name == "bias" else None)
                now = new.get(name, _default_bias(dtype) if name == "bias" else None)
                where = f"{check}.{dtype}.{name} {'none' if was is None else f'{was:g}'}"
                if now is None:
                    loosened.append(f"{where} -> none")
                elif was is None or float(now) > float(was):
                    loosened.append(f"{where} -> {float(now):g}")
                elif float(now) < float(was):
                    tightened.append(f"{where} -> {float(now):g}")
    return loosened, tightened


def tolerance_files(overlay: Path | None) -> list[dict]:
    """The tolerance files in force: the shipped one, then the overlay with what it
    loosens and tightens against the shipped one."""
    out = [{"file": str(DEFAULT_TOLERANCES), "shipped": True, "loosened": [],
            "tightened": []}]
    if overlay is not None:
        loosened, tightened = compare_tables(TolerancePolicy.load().table,
                                             TolerancePolicy.load(overlay).table)
        out.append({"file": str(overlay), "shipped": False, "loosened": loosened,
                    "tightened": tightened})
    return out


def describe(overlay: Path | None, defect_tables: list[dict]) -> dict:
    """environment["policy"]: the files in force (defect tables as
    `defects.InForce.describe()` gives them), the loosened-bound count, and the text the
    banner, the report, the scoreboard and compare print."""
    tolerances = tolerance_files(overlay)
    loosened = sum(len(t["loosened"]) for t in tolerances)
    policy = {"tolerances": tolerances, "known_defects": defect_tables, "loosened": loosened}
    policy["verdict_note"] = verdict_note(policy)
    policy["lines"] = lines(policy)
    return policy


def verdict_note(policy: Mapping[str, Any] | None) -> str:
    """"with 3 loosened bounds: my.toml", or "" when every bound is the shipped one."""
    if not policy or not policy.get("loosened"):
        return ""
    files = [Path(t["file"]).name for t in policy.get("tolerances", []) if t.get("loosened")]
    n = int(policy["loosened"])
    return f"with {_count(n, 'loosened bound')}: {', '.join(files)}"


def verdict_text(verdict: str, environment: Mapping[str, Any] | None) -> str:
    """The verdict as every reader prints it: PASS, or PASS (with N loosened bounds: ...)."""
    note = verdict_note((environment or {}).get("policy"))
    return verdict.upper() + (f" ({note})" if note else "")


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def lines(policy: Mapping[str, Any] | None) -> list[str]:
    """One line per kind of policy file: each file in force and what it changes."""
    if not policy:
        return []
    parts = []
    for t in policy.get("tolerances", []):
        if t.get("shipped"):
            parts.append(f"conformance/{Path(t['file']).name} (shipped)")
            continue
        loose = t.get("loosened", [])
        what = "loosens " + _count(len(loose), "bound")
        if loose:
            what += ": " + ", ".join(loose[:6]) + (", ..." if len(loose) > 6 else "")
        if t.get("tightened"):
            what += "; tightens " + _count(len(t["tightened"]), "bound")
        parts.append(f"{t['file']} ({what})")
    out = ["tolerances: " + " + ".join(parts)] if parts else []
    parts = []
    for d in policy.get("known_defects", []):
        what = ["shipped"] if d.get("shipped") else []
        what.append(f"{d['entries']} entr{'y' if d['entries'] == 1 else 'ies'}")
        if d.get("overrides"):
            what.append("replaces " + ", ".join(d["overrides"]))
        what.append(f"seen build {d['seen_build']}" if d.get("seen_build")
                    else "has not seen this build")
        name = f"conformance/{Path(d['file']).name}" if d.get("shipped") else d["file"]
        parts.append(f"{name} ({', '.join(what)})")
    out.append("known-defect tables: " + (" + ".join(parts) if parts else
                                    "none (--no-shipped-defects, no --known-defects file)"))
    return out
