"""The report, compare and merge on real recorded runs (see conftest.py): content,
autoescape, atomic writes, bad input, and the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conformance.report import render as render_mod
from conformance.report.cli import main
from conformance.report.schema import ResultsError, load_results

from .conftest import ROOT, inner_run

pytest_plugins = ("pytester",)


def _doc(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


# -- the report written by the plugin -------------------------------------------------------


def test_plugin_writes_report_junit_and_environment(report_run):
    doc = _doc(report_run)
    html = (report_run / "index.html").read_text()
    statuses = {r["nodeid"]: r["status"] for r in doc["results"]}
    assert doc["verdict"] == "fail" and "failed" in statuses.values()
    # The verdict banner and every recorded check's row are in the page.
    assert re.search(r'<div id="verdict" class="verdict verdict-fail"', html)
    assert 'id="model-matrix"' in html and 'id="op-matrix"' in html
    # Counts shown are the recorded ones.
    for status, n in doc["counts"].items():
        assert f'{status}: <b>{n}</b>' in html
    # JUnit XML from the same session, one testcase per recorded check.
    assert doc["junit_xml"] == "junit.xml"
    cases = ET.parse(report_run / "junit.xml").getroot().iter("testcase")
    assert len(list(cases)) == len(doc["results"])
    env = doc["environment"]
    assert env["infinicore_version"] == "0.1.0" and env["backend"] == "cpu"
    assert set(env["library_sha256"]) >= {"libinfiniop.so", "libinfinirt.so"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in env["library_sha256"].values())
    for key in ("device_name", "torch_version", "transformers_version", "command_line"):
        assert env[key], key
    assert "--dtype f32" in env["command_line"]


def test_first_divergence_is_highlighted_with_plot(report_run):
    doc = _doc(report_run)
    (act,) = [r for r in doc["results"] if r["check"] == "model_activations"]
    first = act["info"]["first_divergence"]
    assert first is not None and first["ops"], "the strict bound must localize something"
    html = (report_run / "index.html").read_text()
    rows = re.findall(r'<tr class="first-divergence"><td><code>([^<]+)</code>', html)
    assert rows == [first["tensor"]]
    assert "First divergence:" in html
    # One embedded PNG plot per activation check, nothing fetched from elsewhere.
    assert html.count('src="data:image/png;base64,') == 1
    assert not re.search(r'(src|href)="(https?:)?//', html)
    # The op named by the divergence links to its op-level table.
    assert 'href="#op-f32-rms_norm"' in html and 'id="op-f32-rms_norm"' in html


def test_model_path_with_markup_is_escaped(report_run):
    doc = _doc(report_run)
    (act,) = [r for r in doc["results"] if r["check"] == "model_activations"]
    assert "<script>alert(1)</script>" in act["params"]["model_name"]
    html = (report_run / "index.html").read_text()
    assert "<script" not in html.lower(), "a recorded string became markup"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


# -- atomic writes --------------------------------------------------------------------------


def test_render_failure_leaves_nothing_half_written(report_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text((report_run / "results.json").read_text())

    def boom(*a, **k):
        raise RuntimeError("template exploded")

    monkeypatch.setattr(render_mod, "render_html", boom)
    with pytest.raises(RuntimeError, match="template exploded"):
        render_mod.render_run(run)
    assert sorted(p.name for p in run.iterdir()) == ["results.json"]


def test_interrupted_write_keeps_the_old_report(report_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text((report_run / "results.json").read_text())
    render_mod.render_run(run)
    old = (run / "index.html").read_bytes()

    def fail_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError, match="disk full"):
        render_mod.render_run(run)
    assert (run / "index.html").read_bytes() == old
    assert sorted(p.name for p in run.iterdir()) == ["index.html", "results.json"]


def test_plugin_render_failure_is_loud_and_keeps_results(pytester):
    """A passing session whose report cannot be rendered exits 3 with the traceback; the
    results and the JUnit XML are still there, and no partial index.html."""
    pytester.makeconftest('''
import conformance.report.render as r
def _boom(*a, **k):
    raise RuntimeError("template exploded")
r.render_html = _boom
''')
    pytester.makepyfile(test_inner='''
def test_ok(verify):
    verify.close([1.0], [1.0], "add", "f32")
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider",
                                           f"--report-dir={pytester.path / 'reports'}")
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    result.stderr.fnmatch_lines(["*rendering the HTML report failed*", "*template exploded*"])
    result.stdout.fnmatch_lines(["*REPORT NOT RENDERED: RuntimeError: template exploded*"])
    run = (pytester.path / "reports" / "latest").resolve()
    assert _doc(run)["counts"]["passed"] == 1
    assert sorted(p.name for p in run.iterdir()) == ["junit.xml", "parts", "results.json"]


def test_report_is_written_when_checks_crash(pytester):
    pytester.makepyfile(test_inner='''
import os, signal
from conformance.isolation import run_isolated

def _boom():
    os.kill(os.getpid(), signal.SIGSEGV)

def test_crash():
    run_isolated(_boom, timeout=60)
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider",
                                           f"--report-dir={pytester.path / 'reports'}")
    assert result.ret == 1
    html = (pytester.path / "reports" / "latest" / "index.html").read_text()
    assert 'verdict-fail' in html and 'crashed: <b>1</b>' in html


# -- bad input ------------------------------------------------------------------------------


def test_bad_input_names_file_and_field(op_runs, tmp_path, capsys):
    good = _doc(op_runs["f32"])
    cases = {
        "missing": (None, "no such file or run directory"),
        "corrupt": ("{\"schema_version\": 1, ", "not valid JSON"),
        "version": (json.dumps({**good, "schema_version": 2}),
                    "field schema_version: 2 is not supported"),
        "status": (json.dumps({**good, "results": [{**good["results"][0], "status": "meh"}]}),
                   "field results[0].status: 'meh' is not one of"),
        "field": (json.dumps({k: v for k, v in good.items() if k != "verdict"}),
                  "field verdict: missing"),
    }
    for name, (text, expected) in cases.items():
        run = tmp_path / name
        if text is not None:
            run.mkdir()
            (run / "results.json").write_text(text)
        with pytest.raises(ResultsError, match=re.escape(expected)) as e:
            load_results(run)
        assert str(run) in str(e.value)
        assert main(["report", str(run)]) == 2
        err = capsys.readouterr().err
        assert expected in err and str(run) in err
        assert not (run / "index.html").exists()


# -- compare --------------------------------------------------------------------------------


def test_compare_bf16_against_f32(op_runs, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    page = tmp_path / "cmp.html"
    rc = main(["compare", str(op_runs["bf16"]), str(op_runs["f32"]), "--ignore-param",
               "dtype", "--json", str(out), "--html", str(page)])
    assert rc == 0
    c = json.loads(out.read_text())
    n = len(_doc(op_runs["f32"])["results"])
    assert c["matched"] == n and not c["newly_failing"] and not c["only_in_run"]
    # bf16 keeps 8 mantissa bits against f32's 24: its NMSE is orders of magnitude larger
    # for every elementwise case measured with NMSE (the exact rounding checks have none).
    grown = {(g["key"], g["metric"]): g for g in c["grown"]}
    adds = [k for k in grown if k[0].startswith("op_elementwise") and k[1] == "nmse"]
    elementwise = [r for r in _doc(op_runs["f32"])["results"] if r["check"] == "op_elementwise"
                   and any("nmse" in x["metrics"] for x in r["comparisons"])]
    assert len(adds) == len(elementwise) > 0
    assert all(g["ratio"] > 2.0 and g["run"] > g["baseline"] for g in c["grown"])
    assert "errors grown by more than 2x" in capsys.readouterr().out
    assert "Errors grown by more than 2.0x" in page.read_text()


def test_compare_without_matching_params_matches_nothing(op_runs, capsys):
    rc = main(["compare", str(op_runs["bf16"]), str(op_runs["f32"]), "--limit", "0"])
    assert rc == 0
    out = capsys.readouterr().out
    n = len(_doc(op_runs["f32"])["results"])
    assert ": 0 checks matched" in out and f"only in run: {n}" in out


def test_compare_reports_newly_failing_with_exit_1(op_runs, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    rc = main(["compare", str(op_runs["f32_strict"]), str(op_runs["f32"]), "--json", str(out)])
    assert rc == 1
    c = json.loads(out.read_text())
    failed = {r["nodeid"] for r in _doc(op_runs["f32_strict"])["results"]
              if r["status"] == "failed"}
    assert failed and {x["key"] for x in c["newly_failing"]} == failed
    assert all(k.startswith("conformance/ops/test_op_rms_norm.py") for k in failed)
    assert "NEWLY FAILING" in capsys.readouterr().out
    # The other way round the same checks are newly passing and nothing fails.
    assert main(["compare", str(op_runs["f32"]), str(op_runs["f32_strict"])]) == 0


def test_compare_perf_from_pytest_benchmark(op_runs, pytester, tmp_path, capsys, monkeypatch):
    # pytest-benchmark disables itself when it sees xdist, also via the worker variable
    # this (outer) run may have set.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytester.makepyfile(test_bench='''
def test_sum(benchmark):
    benchmark(sum, range(2000))
''')
    files = []
    for i in range(2):
        f = tmp_path / f"bench{i}.json"
        r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist",
                                          f"--benchmark-json={f}",
                                          f"--report-dir={pytester.path / 'reports'}")
        assert r.ret == 0
        files.append(f)
    out = tmp_path / "cmp.json"
    rc = main(["compare", str(op_runs["f32"]), str(op_runs["f32"]), "--benchmark",
               str(files[1]), "--baseline-benchmark", str(files[0]), "--json", str(out)])
    assert rc == 0
    (p,) = json.loads(out.read_text())["perf"]
    means = [json.loads(f.read_text())["benchmarks"][0]["stats"]["mean"] for f in files]
    assert p["name"].endswith("test_sum") and p["baseline_mean_s"] == means[0]
    assert p["ratio"] == pytest.approx(means[1] / means[0])
    assert "performance (mean time" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text('{"benchmarks": [{"name": "x", "stats": {}}]}')
    assert main(["compare", str(op_runs["f32"]), str(op_runs["f32"]), "--benchmark",
                 str(bad), "--baseline-benchmark", str(files[0])]) == 2
    assert "benchmarks[0].stats.mean" in capsys.readouterr().err


# -- merge ----------------------------------------------------------------------------------


def test_merge_scoreboard_links_each_run(op_runs, tmp_path):
    out = tmp_path / "board"
    runs = [op_runs["f32"], op_runs["bf16"], op_runs["f32_strict"]]
    assert main(["merge", *map(str, runs), "-o", str(out)]) == 0
    html = (out / "index.html").read_text()
    board = json.loads((out / "scoreboard.json").read_text())
    ids = [_doc(r)["run_id"] for r in runs]
    assert [r["run_id"] for r in board["runs"]] == ids
    for r in board["runs"]:
        assert (out / r["href"]).resolve().is_file(), r["href"]
        assert f'href="{r["href"]}"' in html
    cells = {(row["check"], row["dtype"]): row["cells"] for row in board["rows"]}
    f32, bf16, strict = ids
    assert cells[("op_rms_norm", "f32")][f32]["status"] == "passed"
    assert cells[("op_rms_norm", "f32")][bf16] is None
    assert cells[("op_rms_norm", "f32")][strict]["status"] == "failed"
    assert cells[("op_elementwise", "bf16")][bf16]["status"] == "passed"
    assert 'id="scoreboard-matrix"' in html
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp file left"


def test_merge_refuses_bad_run(op_runs, tmp_path, capsys):
    assert main(["merge", str(op_runs["f32"]), str(tmp_path / "nope"), "-o",
                 str(tmp_path / "board")]) == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "board" / "index.html").exists()


# -- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize("sub", [None, "report", "compare", "merge", "screenshot"])
def test_cli_help(sub):
    args = [sys.executable, "-m", "conformance.report", *([sub] if sub else []), "--help"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "usage: infinilm-conformance" in proc.stdout
    if sub is None:
        assert all(c in proc.stdout for c in ("report", "compare", "merge"))


def test_cli_report_rerenders_a_run(op_runs, tmp_path, capsys):
    out = tmp_path / "again.html"
    assert main(["report", str(op_runs["f32"]), "-o", str(out)]) == 0
    assert "rendered in" in capsys.readouterr().out
    assert out.read_text().count('class="s-passed"') > 0


def test_inner_run_helper_sees_one_new_run(tmp_path):
    """inner_run must fail loudly when the child pytest fails unexpectedly."""
    with pytest.raises(AssertionError, match="inner pytest exited 4"):
        inner_run(tmp_path / "r", "conformance/ops/does_not_exist.py", expect=(0,))
