"""`infinilm-conformance bench-history STORE`: the trend page a maintainer opens, rendered
in headless Chromium. A baseline store is filled the way CI fills it (`compare
--baseline last-green` on runs with benchmark JSON: two builds and two machines over four
commits, one planted regression); the page must draw one line per (machine, device,
build), mark the regression, and link each point to its run."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conformance.record import CheckRecord, RunRecord, summarize, verdict_of
from conformance.report.browser import dump_dom, find_chromium, screenshot
from conformance.report.cli import main

UP = "git:2cec6ce6b27a789bf47818b370defa47a271dcc4"
ROUNDS = [1.00, 1.01, 0.99, 1.02, 0.98, 1.00, 1.01, 0.99]


def _chromium() -> str:
    exe = find_chromium()
    if exe is None:
        # Never a skip: CI must say what is missing.
        pytest.fail("chromium is not installed, so the trend page cannot be checked in a "
                    "browser: apt-get install -y --no-install-recommends chromium (Debian), "
                    f"or set INFINILM_CHROMIUM (CI={os.environ.get('CI', '')!r})")
    return exe


def _bench_doc(build: str, times_ms: dict[str, float]) -> dict:
    benchmarks = []
    for name, ms in times_ms.items():
        data = [ms * 1e-3 * r for r in ROUNDS]
        benchmarks.append({"name": name, "fullname": f"conformance/perf/x.py::{name}",
                           "group": None, "extra_info": {"infinicore": build},
                           "stats": {"mean": sum(data) / len(data), "median": ms * 1e-3,
                                     "rounds": len(data), "data": data}})
    return {"benchmarks": benchmarks,
            "infinilm": {"scale": {"name": "cpu"}, "infini_device": "cpu",
                         "infinicore": build}}


def _run(reports: Path, n: int, commit: str, build: str, machine: str,
         times_ms: dict[str, float]) -> Path:
    import json

    results = [CheckRecord(nodeid=f"conformance/perf/x.py::{name}", check="perf_x",
                           test=name, status="passed") for name in times_ms]
    run_id = f"2026120{n}-000000-cpu-{build.split(':')[0]}-{machine}"
    run = RunRecord(run_id=run_id, verdict=verdict_of(results), counts=summarize(results),
                    started_at=f"2026-12-0{n}T00:00:00+0000", duration_s=1.0,
                    pytest_exit_status=0, results=results, planned=len(results),
                    environment={"infini_device": "cpu", "machine_id": machine,
                                 "git_commit": commit, "infinicore": {"key": build}})
    folder = reports / run_id
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(run.to_json())
    (folder / "benchmark.json").write_text(json.dumps(_bench_doc(build, times_ms)))
    (folder / "index.html").write_text(f"<title>{run_id}</title>")
    return folder


def test_trend_page_in_headless_chromium(tmp_path):
    _chromium()
    reports, store = tmp_path / "reports", tmp_path / "store"
    commits = ["c0ffee01", "c0ffee02", "c0ffee03", "c0ffee04"]
    codes = []
    for n, commit in enumerate(commits, 1):
        slow = 1.5 if n == 3 else 1.0  # a planted regression on 0.1.0, machine m1, commit 3
        for build, machine, times in (
                ("pypi:0.1.0", "m1", {"decode": 10.0 * slow, "prefill": 40.0}),
                (UP, "m1", {"decode": 8.0}),
                ("pypi:0.1.0", "m2", {"decode": 12.0})):
            run = _run(reports, n, commit, build, machine, times)
            codes.append(main(["compare", str(run), "--baseline", "last-green",
                               "--baseline-store", str(store), "--suite", "bench"]))
    assert codes.count(1) == 1 and codes[6] == 1  # only the planted run fails its gate
    page = tmp_path / "site" / "history.html"
    assert main(["bench-history", str(store), "-o", str(page)]) == 0
    dom = dump_dom(page)
    sections = dict(re.findall(r'<section class="bench" data-benchmark="[^"]*::(\w+)">(.*?)'
                               r"</section>", dom, re.S))
    assert set(sections) == {"decode", "prefill"}
    series = {name: re.findall(r'<g class="series" data-series="([^"]+)"', body)
              for name, body in sections.items()}
    assert sorted(series["decode"]) == sorted([f"m1 · cpu · {UP}", "m1 · cpu · pypi:0.1.0",
                                               "m2 · cpu · pypi:0.1.0"])
    assert series["prefill"] == ["m1 · cpu · pypi:0.1.0"]
    # one point per run, over the four commits; the regression marked on its own point
    assert len(re.findall(r'<circle class="point', sections["decode"])) == 12
    (marked,) = re.findall(r'<a href="([^"]+)"><circle class="point regression"',
                           sections["decode"])
    assert (page.parent / marked).resolve() == \
        (reports / "20261203-000000-cpu-pypi-m1" / "index.html").resolve()
    assert re.search(r'<span id="regressions">1 regressions</span>', dom)
    for commit in commits:
        assert commit in sections["decode"]
    png = screenshot(page, tmp_path / "history.png", 1000, 900)
    assert png.stat().st_size > 5000
