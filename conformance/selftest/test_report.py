"""The report, compare and merge: on real recorded runs (see conftest.py) and on records
built directly (every status and field, without a run): content, autoescape, atomic
writes, bad input, speed, and the CLI."""

from __future__ import annotations

import copy
import html as html_lib
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conformance.record import (
    STATUSES,
    Bound,
    CheckRecord,
    Comparison,
    Crash,
    RecordError,
    RunRecord,
    summarize,
    verdict_of,
)
from conformance.report import render as render_mod
from conformance.report.cli import main
from conformance.report.format import slug

from .runs import ROOT, inner_run
from .synthetic import synthetic_run

pytest_plugins = ("pytester",)


def _run(run_dir: Path) -> RunRecord:
    return RunRecord.load(run_dir)


def _doc(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _write(run: RunRecord, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(run.to_json())
    return run_dir


def _render(run: RunRecord, run_dir: Path, plots: bool = True) -> str:
    return render_mod.render_run(_write(run, run_dir), plots=plots).read_text()


def _text(fragment: str) -> str:
    """What a reader sees: inline tags dropped, other tags a space, entities decoded,
    whitespace collapsed."""
    inline = re.sub(r"</?(?:a|b|code|span|small|sup|i|em|strong)\b[^>]*>", "", fragment)
    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", inline)).split())


def _table(page: str, table_id: str) -> str:
    start = page.index(f'id="{table_id}"')
    return page[start:page.index("</table>", start)]


def _matrix_cells(page: str, table_id: str) -> dict[tuple[str, str], str]:
    """(row head, column) -> the cell's status class, for a one-header-row matrix."""
    table = _table(page, table_id)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)
    columns = [_text(c) for c in re.findall(r"<th[^>]*>(.*?)</th>", rows[0], re.S)][1:]
    out = {}
    for row in rows[1:]:
        head = _text(re.search(r'<td class="rowhead">(.*?)</td>', row, re.S).group(1))
        cells = re.findall(r'<td class="(s-[a-z_]+)"', row)
        for col, cls in zip(columns, cells):
            out[(head.split()[0], col)] = cls
    return out


def _card(page: str, nodeid: str) -> str:
    """The detail card of one check."""
    start = page.index(f'id="{slug("chk", nodeid)}"')
    ends = [i for i in (page.find('<div class="card s-', start), page.find("</section>", start))
            if i != -1]
    return page[start:min(ends)]


def _with(run: RunRecord, records: list[CheckRecord]) -> RunRecord:
    run = copy.deepcopy(run)
    run.results = sorted(records, key=lambda r: r.nodeid)
    run.counts, run.verdict = summarize(run.results), verdict_of(run.results)
    run.planned = len(run.results)
    return run


def _op(nodeid: str, op: str, dtype: str, status: str = "passed", nmse: float = 1e-7,
        **kw) -> CheckRecord:
    metrics = {"max_abs": 1e-3, "nmse": nmse, "reference_nmse": kw.pop("ref", 1e-7)}
    return CheckRecord(
        nodeid=nodeid, check=f"op_{op}", test=f"test_op_{op}", status=status,
        params={"dtype": dtype, "case": "c"}, dtype=dtype, op=op, case="c",
        comparisons=kw.pop("comparisons", [Comparison(
            "output", status == "passed", "output", metrics,
            Bound("elementwise", f"{op}.{dtype}", atol=1e-2, rtol=1e-2, nmse=1e-5))]), **kw)


# -- the report written by the plugin (real runs) -----------------------------------------


def test_plugin_writes_report_junit_and_environment(report_run):
    run = _run(report_run)
    page = (report_run / "index.html").read_text()
    assert run.verdict == "fail" and any(r.status == "failed" for r in run.results)
    assert run.planned == len(run.results)
    # The verdict banner, both matrices, and the count of every status.
    assert re.search(r'<div id="verdict" class="verdict verdict-fail"', page)
    assert 'id="model-matrix"' in page and 'id="op-matrix"' in page
    for status in STATUSES:
        assert f"{status}: <b>{run.counts[status]}</b>" in page
    assert "NOT RUN" not in page, "every planned check ran"
    # JUnit XML from the same session, one testcase per recorded check.
    assert run.junit_xml == "junit.xml"
    cases = ET.parse(report_run / "junit.xml").getroot().iter("testcase")
    assert len(list(cases)) == len(run.results)
    env = run.environment
    assert env["infinicore_version"] == "0.1.0" and env["backend"] == "cpu"
    assert set(env["library_sha256"]) >= {"libinfiniop.so", "libinfinirt.so"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in env["library_sha256"].values())
    for key in ("device_name", "torch_version", "transformers_version", "command_line"):
        assert env[key], key
    assert "--dtype f32" in env["command_line"]


def test_failing_op_checks_link_their_replay_bundles(report_run):
    run = _run(report_run)
    page = (report_run / "index.html").read_text()
    failed = [r for r in run.results if r.status == "failed" and r.op == "rms_norm"]
    assert failed
    for r in failed:
        assert r.bundle, f"{r.nodeid}: no replay bundle"
        assert (report_run / r.bundle / "README.txt").is_file()
        assert f'href="{r.bundle}/"' in page and f'href="{r.bundle}/README.txt"' in page
        assert f"python -m conformance.replay {r.bundle}" in page
    # rms_norm failed in every f32 case: its op-matrix cell is red, add/mul stay green.
    cells = _matrix_cells(page, "op-matrix")
    assert cells[("rms_norm", "f32")] == "s-failed"
    assert cells[("add", "f32")] == cells[("mul", "f32")] == "s-passed"


def test_localization_is_highlighted_with_plot(report_run):
    run = _run(report_run)
    (act,) = [r for r in run.results if r.check == "model_activations"]
    assert act.localization, "the strict bound of zero must localize something"
    loc = act.localization[0]
    page = (report_run / "index.html").read_text()
    rows = re.findall(r'<tr class="first-divergence"><td><code>([^<]+)</code>', page)
    assert rows == [loc.tensor]
    where = f"{loc.phase}: layer {loc.layer} sub-module {loc.submodule} ({loc.tensor}): " \
            f"{loc.origin}"
    assert where in _text(page)
    # One inline SVG plot per phase/step group (a prefill here), nothing fetched elsewhere.
    assert page.count('<svg class="plot"') == 1
    assert not re.search(r'(src|href)="(https?:)?//', page)
    # The ops named by the localization link to their op-level sections.
    assert 'href="#op-f32-rms_norm"' in page and 'id="op-f32-rms_norm"' in page


def test_model_path_with_markup_is_escaped(report_run):
    run = _run(report_run)
    (act,) = [r for r in run.results if r.check == "model_activations"]
    assert "<script>alert(1)</script>" in act.model
    page = (report_run / "index.html").read_text()
    assert "<script" not in page.lower(), "a recorded string became markup"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


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
    page = (pytester.path / "reports" / "latest" / "index.html").read_text()
    assert "verdict-fail" in page and "crashed: <b>1</b>" in page


def test_crashed_op_check_lands_in_its_cell_end_to_end(pytester):
    """A check that kills its process is recorded (by the supervisor) with its typed
    case: the report puts it in its op x dtype cell, never under a '—' dtype."""
    pytester.makepyfile(test_op_gemm='''
import os, signal
import pytest

@pytest.mark.parametrize("dtype", ["bf16"])
@pytest.mark.parametrize("case", ["wide", "boom"])
def test_op_gemm(case, dtype, verify):
    if case == "boom":
        os.kill(os.getpid(), signal.SIGSEGV)
    verify.close([1.0], [1.0], "gemm", "f32")
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--isolate=yes",
                                           f"--report-dir={pytester.path / 'reports'}")
    assert result.ret == 1
    run_dir = (pytester.path / "reports" / "latest").resolve()
    (crashed,) = [r for r in _run(run_dir).results if r.status == "crashed"]
    assert (crashed.op, crashed.dtype, crashed.crash.signal) == ("gemm", "bf16", "SIGSEGV")
    page = (run_dir / "index.html").read_text()
    assert _matrix_cells(page, "op-matrix") == {("gemm", "bf16"): "s-crashed"}
    assert 'id="other-matrix"' not in page
    assert "signal SIGSEGV" in _text(page)


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
    run_dir = (pytester.path / "reports" / "latest").resolve()
    assert _run(run_dir).counts["passed"] == 1
    names = {p.name for p in run_dir.iterdir()}
    assert {"junit.xml", "results.json"} <= names and "index.html" not in names
    assert not [n for n in names if n.startswith(".")], "temporary file left"


# -- what the report shows, on records built directly -------------------------------------


def test_not_run_checks_make_the_banner_say_so(tmp_path):
    run = synthetic_run()
    assert run.verdict == "fail" and run.counts["not_run"] == 2
    page = _render(run, tmp_path / "run")
    banner = re.search(r'<div id="verdict"(.*?)</div>', page, re.S).group(0)
    assert "verdict-fail" in banner
    assert f"NOT RUN: 2 of {run.planned} planned checks did not run" in _text(banner)
    for status in STATUSES:
        assert f"{status}: <b>{run.counts[status]}</b>" in page
    # The not-run section gives each reason and the checks with their typed case.
    section = _text(page[page.index('id="not-run"'):page.index('id="known-defects"')])
    assert "the run was interrupted before this check" in section
    assert "xdist worker(s) gw1 died and were not replaced" in section
    assert "conformance/ops/test_op_gemm.py::test_op_gemm[f32-late]" in section
    # Not-run checks sit in their own cells, not among other checks.
    cells = _matrix_cells(page, "op-matrix")
    assert cells[("gemm", "f32")] == "s-not_run"


def test_a_run_without_not_run_checks_has_no_not_run_banner(tmp_path):
    run = synthetic_run()
    run = _with(run, [r for r in run.results if r.status != "not_run"])
    page = _render(run, tmp_path / "run")
    assert "NOT RUN" not in page and 'id="not-run"' not in page


def test_crashed_record_lands_in_its_op_cell(tmp_path):
    base = "conformance/ops/test_op_gemm.py::test_op_gemm"
    crashed = _op(f"{base}[bf16-huge]", "gemm", "bf16", "crashed", comparisons=[],
                  message="crashed: process killed by SIGSEGV; op gemm",
                  crash=Crash("SIGSEGV", -11, op="gemm", last_call="infiniopGemm (_base.py:88)",
                              traceback="Fatal Python error: Segmentation fault"))
    run = _with(synthetic_run(), [_op(f"{base}[f32-c]", "gemm", "f32"),
                                  _op(f"{base}[bf16-c]", "gemm", "bf16"), crashed])
    page = _render(run, tmp_path / "run")
    assert _matrix_cells(page, "op-matrix") == {("gemm", "f32"): "s-passed",
                                                ("gemm", "bf16"): "s-crashed"}
    assert "—" not in _table(page, "op-matrix") and 'id="other-matrix"' not in page
    card = _card(page, crashed.nodeid)
    assert "crash: signal SIGSEGV (exit code -11) · op gemm · last InfiniCore call " \
           "infiniopGemm (_base.py:88)" in _text(card)
    assert "<details><summary>traceback of the crashed process</summary>" in card
    assert 'href="#op-bf16-gemm"' in card


def test_capturability_is_a_column_of_the_op_matrix(tmp_path):
    """test_op_capture records carry the op they capture: one 'graph capture' cell per
    op (all dtypes), apart from the op's accuracy cells."""
    cap = "conformance/ops/test_op_capture.py::test_op_capture"
    records = [_op("conformance/ops/test_op_gemm.py::test_op_gemm[bf16-c]", "gemm", "bf16"),
               _op("conformance/ops/test_op_swiglu.py::test_op_swiglu[bf16-c]", "swiglu",
                   "bf16")]
    for d in ("f32", "bf16"):
        for op, status in (("gemm", "passed"), ("swiglu", "crashed")):
            r = _op(f"{cap}[{d}-{op}]", op, d, status)
            r.check, r.test = "op_capture", "test_op_capture"
            records.append(r)
    page = _render(_with(synthetic_run(), records), tmp_path / "run", plots=False)
    cells = _matrix_cells(page, "op-matrix")
    assert cells[("gemm", "graph capture")] == "s-passed"
    assert cells[("swiglu", "graph capture")] == "s-crashed"
    # The accuracy cells hold only the op's own checks: f32 had capture checks alone.
    assert cells[("gemm", "bf16")] == "s-passed" and cells[("swiglu", "bf16")] == "s-passed"
    assert cells[("gemm", "f32")] == "s-none"
    row = re.search(r'<tr data-op="swiglu">(.*?)</tr>', _table(page, "op-matrix"), re.S)
    assert "2 crash" in _text(row.group(1))


def test_parallel_layouts_get_their_own_matrix(tmp_path):
    base = "conformance/model/test_model_parallel.py::test_model_parallel"
    records = []
    for model in ("tiny-gqa", "tiny-mha"):
        for layout, status in (("tp2", "passed"), ("pp2", "passed"), ("tp4", "unsupported")):
            records.append(CheckRecord(
                nodeid=f"{base}[{model}-bf16-{layout}]", check="model_parallel",
                test="test_model_parallel", status=status,
                params={"dtype": "bf16", "model_name": model, "layout": layout},
                dtype="bf16", model=model))
    records[0].status = "failed"  # tiny-gqa tp2
    page = _render(_with(synthetic_run(), records), tmp_path / "run", plots=False)
    rows = {_text(m.group(1)): _text(m.group(2)) for m in re.finditer(
        r'<tr><td class="rowhead">(.*?)</td>(.*?)</tr>', _table(page, "parallel-matrix"))}
    assert rows == {"tp2": "1 fail · 1 pass", "pp2": "2 pass", "tp4": "2 unsup"}


def test_a_report_without_capture_checks_has_no_capture_column(tmp_path):
    run = _with(synthetic_run(), [_op("conformance/ops/test_op_gemm.py::test_op_gemm[f32-c]",
                                      "gemm", "f32")])
    assert "graph capture" not in _render(run, tmp_path / "run", plots=False)


def test_failing_checks_show_bounds_defects_bundles_and_localization(tmp_path):
    run = synthetic_run()
    page = _render(run, tmp_path / "run")
    text = _text(page)
    # A property reads as a property, with its ulp error, not as "wrong result".
    assert "property: correctly rounded violated max ulp 1, fraction 0.0469" in text
    assert "property: correctly rounded: 0/1 hold, max ulp 1, fraction 0.0469" in text
    # Known defect: the bound, the defect and the envelope that explains it.
    assert "known defect demo-mul-rtz (property): mul rounds toward zero" in text
    assert "demo-mul-rtz: envelope within 1 ulp (demo-mul-rtz)" in text
    # A failing comparison with its bound as the record describes it.
    assert "atol=0.01 rtol=0.01 nmse<=1e-05 (gemm.bf16)" in text
    # The replay bundle: relative links and the command.
    bundle = "bundles/test_op_gemm_bf16-wide_"
    assert f'href="{bundle}/"' in page and f'href="{bundle}/README.txt"' in page
    assert f"python -m conformance.replay {bundle}" in text
    # Localization callouts: prefill (isolated) and decode-only (accumulated), ops linked.
    assert ("prefill: layer 1 sub-module mlp (layers.1.mlp): starts here (wrong on the "
            "reference's own input too), NMSE 0.0005 > bound 2e-06; ops to look at: rms_norm, "
            "gemm, swiglu") in text
    assert ("decode step 2: layer 0 sub-module attention (layers.0.self_attn): arrives from "
            "earlier layers (within bound on the reference's own input), NMSE 2e-05 > bound "
            "2e-06") in text
    assert 'href="#op-bf16-gemm"' in page and 'id="op-bf16-gemm"' in page
    # causal_softmax and rearrange have no op check in bf16: named, not linked.
    assert 'href="#op-bf16-causal_softmax"' not in page
    # Per-layer plots: one per phase/step group, the localized tensors marked.
    assert page.count('<svg class="plot"') == 2 * 2 * (1 + 4)
    assert page.count('class="mark"') == 2


def test_findings_are_listed_and_never_colour_a_cell(tmp_path):
    run = synthetic_run()
    page = _render(run, tmp_path / "run")
    cells = _matrix_cells(page, "op-matrix")
    assert cells[("causal_softmax", "f32")] == "s-passed"
    findings = _text(_table(page, "findings-table"))
    assert "finding: masked positions exactly 0" in findings
    assert "5 masked positions hold a subnormal" in findings
    assert "findings: <b>1</b>" in page


def test_a_schema_2_run_renders_with_its_per_tensor_rows_typed(tmp_path):
    """A results.json of schema 2 (free-form `info`) still loads: its per-tensor rows in
    the layout schema 2 wrote become typed rows and are plotted; any other layout is
    dropped (nothing plotted, no error), scalars become setup."""
    run = synthetic_run()
    doc = json.loads(run.to_json())
    doc["schema_version"] = 2
    for r in doc["results"]:
        rows = r.pop("tensors", [])
        r.pop("setup", None)
        r["info"] = {"prompts": "fixture text"}
        if r["check"] == "model_activations":
            r["info"]["per_tensor"] = rows
        elif r["check"] == "model_decode":
            r["info"]["per_tensor"] = [{"tensor": "embed_tokens", "metrics": {"nmse": 1.0}}]
    d = tmp_path / "run"
    d.mkdir()
    (d / "results.json").write_text(json.dumps(doc))
    old = RunRecord.load(d)
    act = [r for r in old.results if r.check == "model_activations"]
    assert act and all(r.tensors and r.setup == {"prompts": "fixture text"} for r in act)
    assert not any(r.tensors for r in old.results if r.check == "model_decode")
    page = render_mod.render_html(old)
    assert '<svg class="plot"' in page and "prompts = fixture text" in page


def test_amplification_and_non_finite_errors_are_shown(tmp_path):
    run = synthetic_run()
    (act,) = [r for r in run.results if r.check == "model_activations" and r.dtype == "f32"
              and r.model == "tiny-mha"]
    act.tensors[3].accumulated.nmse = float("inf")
    page = _render(run, tmp_path / "run")
    assert ("model_activations: error amplified on its way at layer 1 sub-module mlp "
            "(layers.1.mlp): accumulated NMSE 3e-06 over the strict bound 2e-06 but within "
            "the gate; isolated NMSE 5e-08 (bound 1e-06). Reported, not failing.") \
        in _text(page)
    assert page.count('class="nonfinite"') == 1 and "not finite (NaN or Inf" in page


def test_perf_info_and_benchmarks_are_shown(tmp_path):
    run = synthetic_run()
    run.perf = {"benchmarks": [{"fullname": "bench::decode", "name": "decode",
                                "stats": {"mean": 0.002, "median": 0.002, "min": 0.001,
                                          "stddev": 0.0001, "rounds": 5}}]}
    page = _render(run, tmp_path / "run")
    perf = _text(_table(page, "perf-table"))
    assert "tokens_per_s" in perf and "830" in perf and "decode-b1" in perf
    assert "bench::decode" in page


def test_report_renders_1500_checks(tmp_path):
    """A large run renders whole: every check has its anchor. (How long it takes is a
    benchmark: conformance/perf/test_perf_harness.py.)"""
    run = synthetic_run(scale=120)
    assert len(run.results) > 1400
    _write(run, tmp_path / "run")
    page = render_mod.render_run(tmp_path / "run").read_text()
    assert page.count('id="chk-') >= len([r for r in run.results
                                          if r.status not in ("passed", "unsupported",
                                                              "not_run")])


# -- atomic writes --------------------------------------------------------------------------


def test_render_failure_leaves_nothing_half_written(tmp_path, monkeypatch):
    run = _write(synthetic_run(), tmp_path / "run")

    def boom(*a, **k):
        raise RuntimeError("template exploded")

    monkeypatch.setattr(render_mod, "render_html", boom)
    with pytest.raises(RuntimeError, match="template exploded"):
        render_mod.render_run(run)
    assert sorted(p.name for p in run.iterdir()) == ["results.json"]


def test_interrupted_write_keeps_the_old_report(tmp_path, monkeypatch):
    run = _write(synthetic_run(), tmp_path / "run")
    render_mod.render_run(run)
    old = (run / "index.html").read_bytes()

    def fail_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError, match="disk full"):
        render_mod.render_run(run)
    assert (run / "index.html").read_bytes() == old
    assert sorted(p.name for p in run.iterdir()) == ["index.html", "results.json"]


# -- bad input ------------------------------------------------------------------------------


def test_bad_input_names_file_and_field(tmp_path, capsys):
    good = synthetic_run().to_dict()
    first = good["results"][0]
    cases = {
        "missing": (None, "no such file or run directory"),
        "corrupt": ("{\"schema_version\": 2, ", "not valid JSON"),
        "version": (json.dumps({**good, "schema_version": 1}),
                    "field schema_version: 1 is not supported"),
        "status": (json.dumps({**good, "results": [{**first, "status": "meh"}]}),
                   "field results[0].status: 'meh' is not one of"),
        "field": (json.dumps({k: v for k, v in good.items() if k != "verdict"}),
                  "field verdict: missing"),
        "typed": (json.dumps({**good, "results": [{**first, "dtype": 16}]}),
                  "field results[0].dtype: expected str, got int 16"),
        "nested": (json.dumps({**good, "results": [
            {**first, "crash": {"signal": "SIGSEGV", "exit_code": "x"}}]}),
                   "field results[0].crash.exit_code: expected int"),
    }
    for name, (text, expected) in cases.items():
        run = tmp_path / name
        if text is not None:
            run.mkdir()
            (run / "results.json").write_text(text)
        with pytest.raises(RecordError, match=re.escape(expected)) as e:
            RunRecord.load(run)
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
    n = len(_run(op_runs["f32"]).results)
    assert c["matched"] == n and not c["newly_failing"] and not c["only_in_run"]
    # bf16 keeps 8 mantissa bits against f32's 24: its NMSE is orders of magnitude larger
    # for every elementwise case measured with NMSE (the rounding properties have none).
    grown = {(g["key"], g["metric"]): g for g in c["grown"]}
    adds = [k for k in grown if k[0].startswith("op_elementwise") and k[1] == "nmse"]
    elementwise = [r for r in _run(op_runs["f32"]).results if r.check == "op_elementwise"
                   and any("nmse" in x.metrics for x in r.comparisons)]
    assert len(adds) == len(elementwise) > 0
    assert all(g["ratio"] > 2.0 and g["run"] > g["baseline"] for g in c["grown"])
    assert not [g for g in c["grown"] if g["metric"].startswith("reference_")]
    assert "errors grown by more than 2x" in capsys.readouterr().out
    assert "Errors grown by more than 2.0x" in page.read_text()


def test_compare_without_matching_params_matches_nothing(op_runs, capsys):
    """Two runs with nothing in common (another dtype) are no comparison: exit 1, said so."""
    rc = main(["compare", str(op_runs["bf16"]), str(op_runs["f32"]), "--limit", "0"])
    assert rc == 1
    out = capsys.readouterr().out
    n = len(_run(op_runs["f32"]).results)
    assert ": 0 checks matched" in out and f"only in run: {n}" in out
    assert f"0 of {2 * n} checks matched" in out and "exit status 1: nothing matched" in out


def test_compare_reports_newly_failing_with_exit_1(op_runs, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    rc = main(["compare", str(op_runs["f32_strict"]), str(op_runs["f32"]), "--json", str(out)])
    assert rc == 1
    c = json.loads(out.read_text())
    failed = {r.nodeid for r in _run(op_runs["f32_strict"]).results if r.status == "failed"}
    assert failed and {x["key"] for x in c["newly_failing"]} == failed
    assert all(k.startswith("conformance/ops/test_op_rms_norm.py") for k in failed)
    assert "NEWLY FAILING" in capsys.readouterr().out
    # The other way round the same checks are newly passing and nothing fails.
    assert main(["compare", str(op_runs["f32"]), str(op_runs["f32_strict"])]) == 0


def test_compare_crashed_and_not_run_are_newly_failing(tmp_path, capsys):
    """Matching by typed parameters works for every record: crashed and not-run ones
    carry their case, so an f32 baseline lines up with a bf16 run."""
    def rec(case: str, dtype: str, status: str = "passed", **kw) -> CheckRecord:
        r = _op(f"conformance/ops/test_op_gemm.py::test_op_gemm[{dtype}-{case}]", "gemm",
                dtype, status, **kw)
        r.params["case"] = r.case = case
        return r

    template = synthetic_run()
    base = _with(template, [rec(c, "f32") for c in ("a", "b", "c", "d")])
    base.run_id = "baseline"
    run = _with(template, [
        rec("a", "bf16"),
        rec("b", "bf16", "crashed", comparisons=[], crash=Crash("SIGSEGV", -11, op="gemm")),
        rec("c", "bf16", "not_run", comparisons=[], not_run_reason="the run was interrupted"),
        rec("d", "bf16", "known_defect")])
    rc = main(["compare", str(_write(run, tmp_path / "run")),
               str(_write(base, tmp_path / "base")), "--ignore-param", "dtype",
               "--json", str(tmp_path / "c.json")])
    assert rc == 1
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["matched"] == 4
    assert {(x["key"], x["baseline"], x["run"]) for x in c["newly_failing"]} == {
        ("op_gemm::test_op_gemm[case=b]", "passed", "crashed"),
        ("op_gemm::test_op_gemm[case=c]", "passed", "not_run")}
    assert [x["run"] for x in c["other_changes"]] == ["known_defect"]
    (not_run,) = [x for x in c["newly_failing"] if x["run"] == "not_run"]
    assert not_run["message"] == "not run: the run was interrupted"
    out = capsys.readouterr().out
    assert "NOT RUN: 1 of 4 planned checks" in out and "NEWLY FAILING (2)" in out


def test_compare_grows_our_metrics_only(tmp_path):
    from conformance.report.compare import compare_runs

    template = synthetic_run()
    node = "conformance/ops/test_op_gemm.py::test_op_gemm[f32-c]"
    base = _with(template, [_op(node, "gemm", "f32", nmse=1e-7, ref=1e-7)])
    same = _with(template, [_op(node, "gemm", "f32", nmse=1.5e-7, ref=1e-3)])
    grown = _with(template, [_op(node, "gemm", "f32", nmse=1e-5, ref=1e-7)])
    assert compare_runs(same, base).grown == []
    (g,) = compare_runs(grown, base).grown
    assert (g.where, g.metric, g.ratio) == ("output", "nmse", pytest.approx(100.0))


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
                                          f"--benchmark-json={f}", "--benchmark-max-time=0.2",
                                          f"--report-dir={pytester.path / 'reports'}")
        assert r.ret == 0
        files.append(f)
    out = tmp_path / "cmp.json"
    # Two real timings of one benchmark differ by noise (one in three CI runs, a shift
    # the rank test resolves over thousands of rounds): this test is about reading the
    # files, so no tolerance a noisy machine can break (test_perf_gate.py tests the gate).
    rc = main(["compare", str(op_runs["f32"]), str(op_runs["f32"]), "--benchmark",
               str(files[1]), "--baseline-benchmark", str(files[0]), "--json", str(out),
               "--perf-tolerance", "1000"])
    assert rc == 0
    (p,) = json.loads(out.read_text())["perf"]
    medians = [json.loads(f.read_text())["benchmarks"][0]["stats"]["median"] for f in files]
    assert p["name"].endswith("test_sum") and p["baseline_median_s"] == medians[0]
    assert p["ratio"] == pytest.approx(medians[1] / medians[0])
    assert p["p_slower"] is not None and p["rounds"][0] > 1  # the rounds were read
    assert "performance (median of the rounds" in capsys.readouterr().out
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
    page = (out / "index.html").read_text()
    board = json.loads((out / "scoreboard.json").read_text())
    ids = [_run(r).run_id for r in runs]
    assert [r["run_id"] for r in board["runs"]] == ids
    for r in board["runs"]:
        assert (out / r["href"]).resolve().is_file(), r["href"]
        assert f'href="{r["href"]}"' in page
    cells = {(row["check"], row["dtype"]): row["cells"] for row in board["rows"]}
    f32, bf16, strict = ids
    assert cells[("op_rms_norm", "f32")][f32]["status"] == "passed"
    assert cells[("op_rms_norm", "f32")][bf16] is None
    assert cells[("op_rms_norm", "f32")][strict]["status"] == "failed"
    assert cells[("op_elementwise", "bf16")][bf16]["status"] == "passed"
    assert 'id="scoreboard-matrix"' in page
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp file left"


def test_merge_shows_not_run_and_crashed_in_their_cells(tmp_path):
    a = synthetic_run()
    b = _with(a, [r for r in a.results if r.status != "not_run"])
    b.run_id = "20261130-000001-nvidia-2"
    out = tmp_path / "board"
    assert main(["merge", str(_write(a, tmp_path / "a")), str(_write(b, tmp_path / "b")),
                 "-o", str(out)]) == 0
    board = json.loads((out / "scoreboard.json").read_text())
    cells = {(row["check"], row["dtype"]): row["cells"] for row in board["rows"]}
    assert cells[("op_gemm", "f32")][a.run_id]["status"] == "not_run"
    assert cells[("op_gemm", "f32")][b.run_id]["status"] == "passed"
    assert cells[("model_cache", "bf16")][a.run_id]["status"] == "crashed"
    assert f"NOT RUN: 2 of {a.planned} planned checks did not run" in \
        (out / "index.html").read_text()


def test_merge_refuses_bad_run(op_runs, tmp_path, capsys):
    assert main(["merge", str(op_runs["f32"]), str(tmp_path / "nope"), "-o",
                 str(tmp_path / "board")]) == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "board" / "index.html").exists()


# -- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize("sub", [None, "report", "compare", "merge", "screenshot", "baseline",
                                 "bench-history"])
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
