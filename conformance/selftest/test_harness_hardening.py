"""The record says exactly what ran, and bad input gets a clear error: each case here was
reproduced wrong before (issue 20) and is tested by running the real suite or the real
command line on it."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from conformance.record import RecordError, RunRecord
from conformance.report.cli import main as cli

from .runs import inner_run


def _checkpoint(dest: Path, **changes) -> Path:
    from infinilm_fixtures.tiny import VARIANTS, _write_checkpoint

    spec = replace(VARIANTS["mha"], name="custom", **changes)
    dest.mkdir(parents=True)
    _write_checkpoint(spec, dest)
    return dest


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_no_applicable_layout_is_unsupported_and_the_exit_status_agrees(tmp_path: Path) -> None:
    """1 layer, 3 heads, intermediate 250: no TP/PP layout fits. The parallel check is
    `unsupported` with the numbers; everything passes, so the record says PASS and the
    process exits 0 (it said FAIL with pytest_exit_status 0)."""
    model = _checkpoint(tmp_path / "m", hidden_size=48, num_attention_heads=3,
                        num_key_value_heads=3, head_dim=16, intermediate_size=250,
                        num_hidden_layers=1)
    run = inner_run(tmp_path / "rep", "conformance/model/test_model_parallel.py",
                    f"--model={model}", "--dtype=f32", "-p", "no:xdist", expect=(0,))
    doc = _results(run)
    (rec,) = doc["results"]
    assert rec["status"] == "unsupported" and "no tensor/pipeline layout" in rec["message"]
    assert "3 attention heads" in rec["message"] and "intermediate_size 250" in rec["message"]
    assert doc["verdict"] == "pass" and doc["pytest_exit_status"] == 0


@pytest.mark.parametrize("config, field", [
    ([1, 2, 3], "JSON object"),
    ({"model_type": "llama", "hidden_size": 64}, "num_attention_heads"),
    ("layers-as-string", "num_hidden_layers"),
], ids=["list", "no_heads", "string_layers"])
def test_an_unreadable_config_is_a_counted_error_check(tmp_path: Path, config, field) -> None:
    """A config.json that is a list, lacks a field or holds a string layer count crashed
    the collection of test_model_parallel (pytest: N errors; report: all recorded). Now it
    is one planned check with status `error` naming the file and the field."""
    model = _checkpoint(tmp_path / "m")
    if config == "layers-as-string":
        doc = json.loads((model / "config.json").read_text())
        doc["num_hidden_layers"] = "2"
        config = doc
    (model / "config.json").write_text(json.dumps(config))
    run = inner_run(tmp_path / "rep", "conformance/model/test_model_parallel.py",
                    f"--model={model}", "--dtype=f32", "-p", "no:xdist", expect=(1,))
    doc = _results(run)
    assert doc["planned"] == len(doc["results"]) >= 1
    errors = [r for r in doc["results"] if r["status"] == "error"]
    assert errors and all("config.json" in r["message"] and field in r["message"]
                          for r in errors), [r["message"] for r in errors]
    assert doc["verdict"] == "fail"


def test_a_collection_error_is_a_planned_error_check(tmp_path: Path) -> None:
    bad = tmp_path / "test_broken.py"
    bad.write_text("import no_such_module_anywhere\n\ndef test_x():\n    pass\n")
    run = inner_run(tmp_path / "rep", str(bad), "-p", "no:xdist", expect=(1, 2))
    doc = _results(run)
    (rec,) = [r for r in doc["results"] if r["check"] == "collection"]
    assert rec["status"] == "error" and "no_such_module_anywhere" in rec["message"]
    assert doc["planned"] == len(doc["results"]) and doc["verdict"] == "fail"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("small")
    return inner_run(base / "rep", "conformance/ops/test_op_rms_norm.py", "-k",
                     "decode or prefill", "--dtype=f32", "-p", "no:xdist", expect=(0,))


def test_a_record_whose_verdict_disagrees_with_its_checks_is_refused(small_run: Path,
                                                                     tmp_path: Path) -> None:
    doc = _results(small_run)
    doc["results"][0]["status"] = "failed"  # a failed cell beside "PASS, N passed"
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(RecordError, match="disagree"):
        RunRecord.load(bad)
    for command in (["compare", str(bad), str(small_run)], ["merge", str(bad), str(small_run),
                                                             "-o", str(tmp_path / "m")]):
        assert cli(command) == 2
    assert not (tmp_path / "m").exists()


def test_compare_matches_one_checkpoint_under_two_paths(tmp_path: Path) -> None:
    """The same checkpoint copied to another folder: its checks match by its digest (they
    matched 0 and compare exited 0)."""
    from infinilm_fixtures.tiny import ensure

    a, b = tmp_path / "here", tmp_path / "there"
    shutil.copytree(ensure("mha"), a)
    shutil.copytree(ensure("mha"), b)
    args = ("conformance/model/test_model_logits.py", "--dtype=f32", "-k", "len1",
            "-p", "no:xdist")
    ra = inner_run(tmp_path / "ra", *args, f"--model={a}", expect=(0,))
    rb = inner_run(tmp_path / "rb", *args, f"--model={b}", expect=(0,))
    assert cli(["compare", str(ra), str(rb)]) == 0
    out = tmp_path / "c.json"
    assert cli(["compare", str(ra), str(rb), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["matched"] == 1
    # A record written before digests were recorded (the baseline of a before/after
    # compare) names its models only: both sides then match by name, not 0 of N.
    old = json.loads((ra / "results.json").read_text())
    del old["environment"]["models"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps(old))
    assert cli(["compare", str(ra), str(tmp_path / "old"), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["matched"] == 1
    assert json.loads(out.read_text())["models_matched_by"] == "name"


def test_compare_of_unrelated_runs_exits_non_zero(small_run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    other = inner_run(tmp_path / "rep", "conformance/ops/test_op_rms_norm.py", "-k",
                      "decode", "--dtype=bf16", "-p", "no:xdist", expect=(0,))
    assert cli(["compare", str(other), str(small_run)]) == 1
    assert "checks matched: the runs tested different" in capsys.readouterr().out


def test_unwritable_report_dir_is_one_line_before_any_check(tmp_path: Path) -> None:
    import subprocess
    import sys

    afile = tmp_path / "a-file"
    afile.write_text("")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "conformance/ops/test_op_rms_norm.py", f"--report-dir={afile}/sub"],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 4  # a usage error
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and str(afile) in err[0] and "INTERNALERROR" not in proc.stdout \
        + proc.stderr


def test_cli_output_errors_name_the_path(small_run: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert cli(["report", str(small_run), "-o", str(blocked / "index.html")]) == 2
    err = capsys.readouterr().err
    assert str(blocked / "index.html") in err and ".index.html." not in err
    assert cli(["compare", str(small_run), str(small_run), "--json",
                str(blocked / "c.json")]) == 2
    captured = capsys.readouterr()
    assert "exit status 0" not in captured.out and str(blocked / "c.json") in captured.err
    assert cli(["merge", str(small_run), "-o", str(blocked)]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a directory" in err and "Errno" not in err
