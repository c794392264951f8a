"""Known defects belong to builds (the rule in known_defects.toml's header):
(a) on 0.1.0 every entry applies strictly, so a fix still fails as XPASS;
(b) on the upstream snapshot an entry upstream fixed does not apply, and one it still has
    applies strictly;
(c) on a build the table has not seen, every entry applies unvouched: inside its envelope
    a known_defect marked as such, not showing a note and never a failure.
The selection is tested on the real table; (a) and (c) also end to end, in inner runs of
the real f32 gemm beta = 0 case on the 0.1.0 CPU build (the defect shows there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance.plugin import defects
from conformance.plugin.options import KNOWN_DEFECTS
from infinilm_models.runtime.capabilities import BuildIdentity, current_build

from .runs import inner_run

UPSTREAM = "git:2cec6ce6b27a789bf47818b370defa47a271dcc4"
BETA0 = "cpu-gemm-f32-beta0-reads-c"
BETA0_CHECK = "conformance/ops/test_op_gemm.py::test_op_gemm[f32-beta0_ignores_nan_output]"


def _select(key: str, device: str = "cpu"):
    return defects.select(defects.load(KNOWN_DEFECTS), defects.load_builds(KNOWN_DEFECTS),
                          BuildIdentity(key=key, label=key), device)


def test_a_release_applies_every_entry_strictly() -> None:
    chosen, match = _select("pypi:0.1.0")
    assert match is not None and match.key == "pypi:0.1.0"
    of_release = {d.id for d in defects.load(KNOWN_DEFECTS) if d.device in ("cpu", "*")
                  and "pypi:0.1.0" in d.builds}
    assert {d.id for d in chosen} == of_release
    assert all(d.vouched and d.strict in ("each", "any") for d in chosen)
    assert all(d.builds for d in defects.load(KNOWN_DEFECTS))  # this table names them all


def test_b_upstream_drops_what_it_fixed_and_keeps_what_it_has() -> None:
    chosen, match = _select(UPSTREAM)
    assert match is not None and match.key == "git:2cec6ce6"
    ids = {d.id for d in chosen}
    assert BETA0 not in ids  # fixed upstream: its check gets the normal bound
    assert {"cpu-f16-conversion-truncates", "cpu-f16-conversion-truncates-ops"} <= ids
    assert all(d.vouched for d in chosen)


def test_b_upstream_on_a_device_the_table_has_seen_is_vouched() -> None:
    """The table has seen upstream 2cec6ce6 on NVIDIA (the H200 runs of 2026-12-02):
    its entries for that device apply, vouched."""
    chosen, match = _select(UPSTREAM, "nvidia")
    assert match is not None and match.key == "git:2cec6ce6"
    assert chosen and all(d.vouched for d in chosen)


def test_b_upstream_on_a_device_the_table_has_not_seen_is_unvouched() -> None:
    """On MetaX nobody has run upstream: the shared ("*") entries apply, unvouched."""
    chosen, match = _select(UPSTREAM, "metax")
    assert match is None
    assert chosen and not any(d.vouched for d in chosen)
    assert {d.device for d in chosen} == {"*"}


def test_c_unseen_build_applies_everything_unvouched() -> None:
    chosen, match = _select("sha256:" + "ab" * 32)
    assert match is None
    every_cpu = {d.id for d in defects.load(KNOWN_DEFECTS) if d.device in ("cpu", "*")}
    assert {d.id for d in chosen} == every_cpu
    assert all(not d.vouched and d.strict == "none" for d in chosen)
    merged = defects.merge(chosen[:2])
    assert not merged.vouched and merged.strict == "none"


def test_build_keys_are_checked_and_an_unscoped_entry_applies_everywhere(
        tmp_path: Path) -> None:
    bad = tmp_path / "k.toml"
    bad.write_text('[[defect]]\nid = "x"\ndevice = "cpu"\nkind = "crash"\nnodeid = "a"\n'
                   'reason = "r"\nevidence = "e"\n')
    (mine,) = defects.load(bad)
    for key in ("pypi:0.1.0", UPSTREAM, "sha256:" + "cd" * 32):
        chosen, _ = defects.select([mine], defects.load_builds(KNOWN_DEFECTS),
                                   BuildIdentity(key=key, label=key), "cpu")
        assert chosen == [mine] and mine.vouched and mine.strict == "each"
    bad.write_text(bad.read_text() + 'builds = ["git:abc"]\n')
    with pytest.raises(pytest.UsageError, match="7\\+ hex digits"):
        defects.load(bad)
    bad.write_text('[[build]]\nkey = "pypi:0.1.0"\nname = "x"\n')
    with pytest.raises(pytest.UsageError, match="lacks \\['devices'\\]"):
        defects.load_builds(bad)


def _beta0_run(tmp_path: Path, table: Path) -> dict:
    run = inner_run(tmp_path / "reports", BETA0_CHECK, f"--known-defects={table}",
                    "-p", "no:xdist")
    return json.loads((run / "results.json").read_text())


def _table_without(tmp_path: Path, build_key: str) -> Path:
    """The real table, with `build_key` no longer among the builds it has seen."""
    text = KNOWN_DEFECTS.read_text().replace(f'key = "{build_key}"', 'key = "pypi:0.0.0"')
    out = tmp_path / "known_defects.toml"
    out.write_text(text)
    return out


def test_a_and_c_end_to_end(tmp_path: Path) -> None:
    if current_build().identity.key != "pypi:0.1.0":
        pytest.fail(f"this check needs the PyPI 0.1.0 CPU build, found "
                    f"{current_build().identity.label}")
    seen = _beta0_run(tmp_path / "a", KNOWN_DEFECTS)
    (rec,) = [r for r in seen["results"] if r["nodeid"] == BETA0_CHECK]
    assert rec["status"] == "known_defect" and rec["known_defect"]["vouched"] is True
    assert seen["verdict"] == "pass"
    unseen = _beta0_run(tmp_path / "c", _table_without(tmp_path, "pypi:0.1.0"))
    (rec,) = [r for r in unseen["results"] if r["nodeid"] == BETA0_CHECK]
    assert rec["status"] == "known_defect" and rec["known_defect"]["vouched"] is False
    assert "not one the table has seen" in unseen["environment"]["known_defects_scope"]


def test_a_fix_still_fails_on_a_seen_build_and_is_a_note_on_an_unseen_one(
        tmp_path: Path) -> None:
    """A build where the defect does not show: the 0.1.0 libraries with the stamp gone
    would be unseen; instead, keep the real build and point the beta = 0 entry at a check
    in which it does not show (the beta = 1 case), as a fixed build would look."""
    text = KNOWN_DEFECTS.read_text().replace(
        'nodeid = "conformance/ops/test_op_gemm.py::test_op_gemm[f32-beta0_ignores_nan_output]"',
        'nodeid = "conformance/ops/test_op_gemm.py::test_op_gemm[f32-alpha_beta_residual]"')
    table = tmp_path / "k.toml"
    table.write_text(text)
    check = "conformance/ops/test_op_gemm.py::test_op_gemm[f32-alpha_beta_residual]"
    run = inner_run(tmp_path / "seen", check, f"--known-defects={table}", "-p", "no:xdist",
                    expect=(1,))
    rec = next(r for r in json.loads((run / "results.json").read_text())["results"]
               if r["nodeid"] == check)
    assert rec["status"] == "failed" and "XPASS" in rec["message"]
    unseen_table = tmp_path / "k2.toml"
    unseen_table.write_text(text.replace('key = "pypi:0.1.0"', 'key = "pypi:0.0.0"'))
    run = inner_run(tmp_path / "unseen", check, f"--known-defects={unseen_table}", "-p",
                    "no:xdist", expect=(0,))
    doc = json.loads((run / "results.json").read_text())
    rec = next(r for r in doc["results"] if r["nodeid"] == check)
    assert rec["status"] == "passed" and doc["verdict"] == "pass"
    assert any(BETA0 in n and "did not show" in n for n in doc["environment"]["notes"])
