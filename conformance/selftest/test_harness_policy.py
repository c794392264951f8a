"""A vendor's policy layers on ours and shows (issue 28.4).

* Known-defect tables stack: ours first (unless --no-shipped-defects), then each
  --known-defects file; a later entry replaces an earlier one of the same id, and each table
  vouches only for the builds it lists.
* A table names a build by any key the harness prints: exports:<digest> and libs:<digest>
  (the libraries' bytes, so two builds with the same exports differ) included, strictly.
* A tolerance overlay that loosens a bound is listed with the count on the console banner,
  the report, merge's scoreboard and compare's header, and no PASS is plain there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conformance import policy
from conformance.plugin import defects
from conformance.plugin.options import KNOWN_DEFECTS
from conformance.report.cli import main
from infinilm_models.runtime.capabilities import (
    LIBRARIES,
    BuildIdentity,
    current_build,
    read_build,
)

from .runs import ROOT, inner_run

BETA0 = "cpu-gemm-f32-beta0-reads-c"
BETA0_CHECK = "conformance/ops/test_op_gemm.py::test_op_gemm[f32-beta0_ignores_nan_output]"
CLEAN_CHECK = "conformance/ops/test_op_gemm.py::test_op_gemm[f32-alpha_beta_residual]"


def _entry(id_: str, nodeid: str, builds: list[str] | None = None, device: str = "cpu",
           reason: str = "vendor", envelope: str = "atol = 1e30, rtol = 0.0") -> str:
    scoped = f"builds = {json.dumps(builds)}\n" if builds else ""
    return (f'[[defect]]\nid = "{id_}"\ndevice = "{device}"\nkind = "accuracy"\n'
            f'nodeid = "{nodeid}"\nenvelope = {{ {envelope} }}\n'
            f'reason = "{reason}"\nevidence = "a vendor\'s probe"\n{scoped}\n')


def _build(key: str, devices: str = '["cpu"]') -> str:
    return f'[[build]]\nkey = "{key}"\nname = "the vendor build"\ndevices = {devices}\n\n'


# -- keys -----------------------------------------------------------------------------------


def test_two_builds_with_the_same_exports_differ_by_their_libraries(tmp_path: Path) -> None:
    """The 0.1.0 libraries copied into a prefix without a stamp (a vendor's own build), and
    again with one library's bytes changed but not its exports: one exports: key, two
    libs: keys, and each identity matches its own libs: key only."""
    real = current_build().root / "lib"
    ids = []
    for name, tail in (("a", b""), ("b", b"\0other kernels")):
        lib = tmp_path / name / "lib"
        lib.mkdir(parents=True)
        for so in LIBRARIES:
            if (real / so).is_file():
                shutil.copyfile(real / so, lib / so)
        with open(lib / "libinfiniop.so", "ab") as f:
            f.write(tail)
        ids.append(read_build(tmp_path / name).identity)
    a, b = ids
    assert a.key == b.key and a.key.startswith("exports:") and not a.stamped
    libs_a, libs_b = (next(k for k in i.keys if k.startswith("libs:")) for i in ids)
    assert libs_a != libs_b
    assert a.matches(libs_a[:12]) and not a.matches(libs_b[:12])
    assert b.matches(libs_b) and not b.matches(libs_a)
    assert a.matches(a.key) and b.matches(a.key)  # the exports are the same


def test_matches_stays_what_it_was_for_the_primary_key() -> None:
    i = BuildIdentity(key="git:2cec6ce6b27a789bf47818b370defa47a271dcc4", label="x",
                      also=("exports:" + "ab" * 32, "libs:" + "cd" * 32))
    assert i.matches("git:2cec6ce6") and not i.matches("git:2cec6c")
    assert i.matches("exports:abababa") and i.matches("libs:" + "cd" * 32)
    assert not i.matches("pypi:0.1.0") and not i.matches("libs:abababa")
    assert BuildIdentity(key="pypi:0.1.0", label="x").matches("pypi:0.1.0")
    assert not BuildIdentity(key="pypi:0.1.0", label="x").matches("pypi:0.1")


def test_a_table_may_name_every_key_kind(tmp_path: Path) -> None:
    table = tmp_path / "v.toml"
    keys = ["exports:" + "ab" * 8, "libs:" + "cd" * 32, "sha256:" + "ef" * 8, "git:1234567",
            "pypi:0.1.0"]
    table.write_text(_build(keys[0]) + _entry("v", "x", keys))
    assert defects.load(table)[0].builds == tuple(keys)
    assert defects.load_builds(table)[0].key == keys[0]
    table.write_text(_entry("v", "x", ["exports:xyz"]))
    with pytest.raises(pytest.UsageError, match="exports:<digest>"):
        defects.load(table)


# -- stacking -------------------------------------------------------------------------------


def test_tables_stack_and_a_later_entry_replaces_one_of_the_same_id(tmp_path: Path) -> None:
    libs = "libs:" + "cd" * 32
    vendor = tmp_path / "vendor.toml"
    vendor.write_text(_build(libs) + _entry(BETA0, BETA0_CHECK, [libs], reason="ours now")
                      + _entry("vendor-only", CLEAN_CHECK, [libs]))
    shipped = defects.load(KNOWN_DEFECTS)
    identity = BuildIdentity(key="pypi:0.1.0", label="0.1.0", also=(libs,))
    chosen, tables = defects.stack([KNOWN_DEFECTS, vendor], identity, "cpu")
    by_id = {d.id: d for d in chosen}
    assert by_id[BETA0].reason == "ours now" and by_id[BETA0].vouched  # replaced, by id
    assert by_id["vendor-only"].vouched and by_id["vendor-only"].strict == "each"
    # every other shipped entry for this build still applies, as it did alone
    alone, _ = defects.stack([KNOWN_DEFECTS], identity, "cpu")
    assert {d.id for d in alone} | {"vendor-only"} == set(by_id)
    assert [t.overrides for t in tables] == [(), (BETA0,)]
    assert [t.shipped for t in tables] == [True, False]
    assert tables[0].entries == len(shipped) - 1 and tables[1].entries == 2
    assert tables[1].match is not None and tables[1].match.key == libs
    # on a build the vendor table has not seen, its entries apply unvouched
    other = BuildIdentity(key="pypi:0.1.0", label="0.1.0", also=("libs:" + "ee" * 32,))
    chosen, tables = defects.stack([KNOWN_DEFECTS, vendor], other, "cpu")
    assert not {d.id: d for d in chosen}["vendor-only"].vouched
    assert tables[1].match is None and tables[0].match is not None


def _config(given: list[Path], no_shipped: bool) -> SimpleNamespace:
    opts = {"--known-defects": given, "--no-shipped-defects": no_shipped}
    return SimpleNamespace(getoption=opts.__getitem__)


def test_the_tables_in_force(tmp_path: Path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    assert defects.paths_of(_config([], False)) == [KNOWN_DEFECTS]
    assert defects.paths_of(_config([a, b, a], False)) == [KNOWN_DEFECTS, a, b]
    assert defects.paths_of(_config([a], True)) == [a]
    assert defects.paths_of(_config([KNOWN_DEFECTS], False)) == [KNOWN_DEFECTS]


def test_a_vendor_table_keyed_by_libs_and_exports_applies_strictly(tmp_path: Path) -> None:
    """End to end on the real build: the vendor's table has seen it (by its libs: key) and
    scopes one entry by libs:, one by exports:. The first replaces our beta = 0 entry and
    shows; the second names a check in which it does not show: strict, so XPASS fails."""
    build = current_build()
    libs = next(k for k in build.identity.keys if k.startswith("libs:"))[:20]
    exports = f"exports:{build.exports_digest[:16]}"
    vendor = tmp_path / "vendor.toml"
    vendor.write_text(_build(libs) + _entry(BETA0, BETA0_CHECK, [libs], reason="vendor beta0",
                                            envelope="nonfinite = true")
                      + _entry("vendor-clean", CLEAN_CHECK, [exports]))
    run = inner_run(tmp_path / "reports", BETA0_CHECK, CLEAN_CHECK, f"--known-defects={vendor}",
                    "-p", "no:xdist", expect=(1,))
    doc = json.loads((run / "results.json").read_text())
    by_id = {r["nodeid"]: r for r in doc["results"]}
    beta0 = by_id[BETA0_CHECK]
    assert beta0["status"] == "known_defect" and beta0["known_defect"]["vouched"] is True
    assert beta0["known_defect"]["reason"] == "vendor beta0"
    clean = by_id[CLEAN_CHECK]
    assert clean["status"] == "failed" and "XPASS" in clean["message"], clean["message"]
    # the fix asks for the entry's removal from the table it is in: the vendor's
    assert f"remove it from {vendor} if" in clean["message"], clean["message"]
    tables = doc["environment"]["policy"]["known_defects"]
    assert [(Path(t["file"]).name, t["shipped"], t["overrides"]) for t in tables] == [
        ("known_defects.toml", True, []), ("vendor.toml", False, [BETA0])]
    assert tables[1]["seen_build"] == libs


# -- loosened bounds show -------------------------------------------------------------------


def test_compare_tables_counts_what_an_overlay_loosens() -> None:
    shipped = {"gemm": {"f32": {"atol": 1e-4, "rtol": 1e-4, "nmse": 1e-10}},
               "model_logits": {"f16": {"k": 8.0, "floor": 1e-6}}}
    merged = {"gemm": {"f32": {"atol": 1e-3, "rtol": 1e-5, "bias": 1.0}},
              "model_logits": {"f16": {"k": 8.0, "floor": 1e-6}}}
    loosened, tightened = policy.compare_tables(shipped, merged)
    assert loosened == ["gemm.f32.atol 0.0001 -> 0.001", "gemm.f32.nmse 1e-10 -> none",
                        f"gemm.f32.bias {policy._default_bias('f32'):g} -> 1"]
    assert tightened == ["gemm.f32.rtol 0.0001 -> 1e-05"]
    assert policy.compare_tables(shipped, shipped) == ([], [])
    pol = {"tolerances": [{"file": "/x/t.toml", "loosened": loosened}], "loosened": 3}
    assert policy.verdict_text("pass", {"policy": pol}) == \
        "PASS (with 3 loosened bounds: t.toml)"
    assert policy.verdict_text("pass", {}) == "PASS"


def test_a_loosened_overlay_shows_on_banner_report_scoreboard_and_compare(
        tmp_path: Path, capsys) -> None:
    loose = tmp_path / "loose.toml"
    loose.write_text("[rms_norm]\nf32 = { atol = 1e-3, rtol = 1e-5 }\n")
    args = ["conformance/ops/test_op_rms_norm.py", "-k", "test_op_rms_norm and not sweep",
            "--dtype", "f32", "-p", "no:xdist"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--infini-device",
         "cpu", f"--report-dir={tmp_path / 'loose'}", f"--tolerances={loose}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    note = "PASS (with 2 loosened bounds: loose.toml)"
    bounds = "rms_norm.f32.atol 1e-05 -> 0.001, rms_norm.f32.nmse 1e-11 -> none"
    # the console banner
    assert f"verdict: {note}" in proc.stdout and "verdict: PASS   " not in proc.stdout
    assert f"{loose} (loosens 2 bounds: {bounds})" in proc.stdout
    # the record and the report
    run = (tmp_path / "loose" / "latest").resolve()
    doc = json.loads((run / "results.json").read_text())
    assert doc["verdict"] == "pass" and doc["environment"]["policy"]["loosened"] == 2
    page = (run / "index.html").read_text()
    assert f"<title>{note} ·" in page and f'id="loosened-note">({note[6:-1]})' in page
    assert "rms_norm.f32.atol 1e-05 -&gt; 0.001" in page
    # the same record judged by the shipped bounds only: the baseline merge and compare see
    strict = tmp_path / "strict" / "20261130-000000-cpu-1"
    strict.mkdir(parents=True)
    doc["environment"]["policy"] = policy.describe(None, doc["environment"]["policy"][
        "known_defects"])
    doc["run_id"] = strict.name
    (strict / "results.json").write_text(json.dumps(doc))
    # merge's scoreboard
    assert main(["merge", str(run), str(strict), "-o", str(tmp_path / "board")]) == 0
    board = json.loads((tmp_path / "board" / "scoreboard.json").read_text())
    assert {r["run_id"]: r["verdict_text"] for r in board["runs"]} == {
        run.name: note, strict.name: "PASS"}
    assert any(str(loose) in line for r in board["runs"] for line in r["policy"])
    html = (tmp_path / "board" / "index.html").read_text()
    assert note in html and str(loose) in html
    # compare's header, the loosened run on either side
    for a, b in ((run, strict), (strict, run)):
        capsys.readouterr()
        assert main(["compare", str(a), str(b)]) == 0
        out = capsys.readouterr().out
        head = out.split("\n\n")[0]
        assert f"{run.name}: {note}" in head and f"{strict.name}: PASS," in head
        assert f"{loose} (loosens 2 bounds: {bounds})" in head
        assert head.count("PASS,") == 1  # only the strict run says a plain PASS
