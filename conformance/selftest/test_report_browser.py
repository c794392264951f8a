"""The report as a browser shows it: headless Chromium renders a real run's index.html,
and a run built from records with every status; the verdict banner, the not-run banner,
the matrices and the plots must be in the rendered DOM and on the screenshot. The
screenshots are saved next to the reports (index.png)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from conformance.report.browser import dump_dom, find_chromium, screenshot
from conformance.report.render import render_run

from .synthetic import synthetic_run

WIDTH, HEIGHT = 1400, 1800
FAIL_RED = (0xC6, 0x28, 0x28)   # .verdict-fail
PASS_CELL = (0xC8, 0xE6, 0xC9)  # .s-passed
FAIL_CELL = (0xEF, 0x9A, 0x9A)  # .s-failed
CRASH_CELL = (0x7B, 0x1F, 0xA2)  # .s-crashed
NOT_RUN = (0x45, 0x5A, 0x64)    # .s-not_run and the not-run banner


def _chromium() -> str:
    exe = find_chromium()
    if exe is None:
        # Never a skip: a skip is recorded as an error anyway, and CI must say what is missing.
        pytest.fail("chromium is not installed, so the report cannot be checked in a browser: "
                    "apt-get install -y --no-install-recommends chromium (Debian), or set "
                    f"INFINILM_CHROMIUM (CI={os.environ.get('CI', '')!r})")
    return exe


def _pixels_near(img: np.ndarray, rgb: tuple[int, int, int], tol: float = 6 / 255) -> int:
    return int((np.abs(img[..., :3] - np.array(rgb) / 255.0) <= tol).all(axis=-1).sum())


def _table(dom: str, table_id: str) -> str:
    start = dom.index(f'id="{table_id}"')
    return dom[start:dom.index("</table>", start)]


def _shot(html, png) -> np.ndarray:
    import matplotlib.image

    path = screenshot(html, png, WIDTH, HEIGHT)
    print(f"screenshot: {path}")
    img = matplotlib.image.imread(str(path))
    assert img.shape[:2] == (HEIGHT, WIDTH)
    assert float(img[..., :3].std()) > 0.05, "blank screenshot"
    return img


def test_report_in_headless_chromium(report_run):
    _chromium()
    html = report_run / "index.html"

    dom = dump_dom(html)
    verdict = re.search(r'<div id="verdict"[^>]*>\s*([A-Z]+)', dom)
    assert verdict and verdict.group(1) == "FAIL", "verdict banner missing from the DOM"
    for table in ("model-matrix", "op-matrix"):
        assert f'id="{table}"' in dom, f"{table} missing from the DOM"
    op_matrix = _table(dom, "op-matrix")
    assert re.search(r'<td class="s-failed"[^>]*><a[^>]*>\d+ fail', op_matrix)
    assert re.search(r'<td class="s-passed"[^>]*><a[^>]*>\d+ pass', op_matrix)
    # The per-layer plot is inline SVG the browser parsed (an element, with its lines).
    assert re.search(r'<svg class="plot"[^>]*>.*?<polyline ', dom, re.S)

    img = _shot(html, report_run / "index.png")
    # The red FAIL banner fills the top of the page...
    top = img[:40]
    assert _pixels_near(top, FAIL_RED) > 0.5 * top.shape[0] * top.shape[1]
    # ...and the matrix cells (passed green, failed red) are painted below it.
    body = img[60:]
    assert _pixels_near(body, PASS_CELL) > 500
    assert _pixels_near(body, FAIL_CELL) > 200


def test_every_status_in_headless_chromium(tmp_path):
    """Records with every status: the NOT RUN banner is shown, a crashed op check sits in
    its gemm/bf16 cell, and the cells are painted in their status colours."""
    _chromium()
    run = synthetic_run()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(run.to_json())
    html = render_run(run_dir)

    dom = dump_dom(html)
    banner = re.search(r'<div id="verdict".*?</div>', dom, re.S).group(0)
    assert re.search(r"NOT RUN: 2 of \d+ planned checks did not run", banner)
    gemm = re.search(r'<tr data-op="gemm">(.*?)</tr>', _table(dom, "op-matrix"), re.S).group(1)
    cells = re.findall(r'<td class="(s-[a-z_]+)"', gemm)
    assert cells == ["s-not_run", "s-crashed"], "gemm: f32 not run, bf16 crashed"

    img = _shot(html, run_dir / "index.png")
    top = img[:40]
    assert _pixels_near(top, FAIL_RED) > 0.3 * top.shape[0] * top.shape[1]
    assert _pixels_near(top, NOT_RUN) > 2000, "the NOT RUN banner is not painted"
    body = img[60:]
    for rgb in (PASS_CELL, FAIL_CELL, CRASH_CELL, NOT_RUN):
        assert _pixels_near(body, rgb) > 200, rgb
