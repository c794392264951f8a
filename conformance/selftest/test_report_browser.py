"""The report as a browser shows it: headless Chromium renders a real run's index.html;
the verdict banner and the matrix must be in the rendered DOM and on the screenshot.
The screenshot is saved next to the report (index.png)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from conformance.report.browser import dump_dom, find_chromium, screenshot

WIDTH, HEIGHT = 1400, 1800
FAIL_RED = (0xC6, 0x28, 0x28)   # .verdict-fail
PASS_CELL = (0xC8, 0xE6, 0xC9)  # .s-passed
FAIL_CELL = (0xEF, 0x9A, 0x9A)  # .s-failed


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


def test_report_in_headless_chromium(report_run):
    _chromium()
    html = report_run / "index.html"

    dom = dump_dom(html)
    verdict = re.search(r'<div id="verdict"[^>]*>\s*([A-Z]+)', dom)
    assert verdict and verdict.group(1) == "FAIL", "verdict banner missing from the DOM"
    for table in ("model-matrix", "op-matrix"):
        assert f'id="{table}"' in dom, f"{table} missing from the DOM"
    op_matrix = dom[dom.index('id="op-matrix"'):]
    op_matrix = op_matrix[:op_matrix.index("</table>")]
    assert re.search(r'<td class="s-failed"[^>]*><a[^>]*>\d+ fail', op_matrix)
    assert re.search(r'<td class="s-passed"[^>]*><a[^>]*>\d+ pass', op_matrix)

    png = screenshot(html, report_run / "index.png", WIDTH, HEIGHT)
    print(f"screenshot: {png}")
    import matplotlib.image

    img = matplotlib.image.imread(str(png))
    assert img.shape[:2] == (HEIGHT, WIDTH)
    assert float(img[..., :3].std()) > 0.05, "blank screenshot"
    # The red FAIL banner fills the top of the page...
    top = img[:40]
    assert _pixels_near(top, FAIL_RED) > 0.5 * top.shape[0] * top.shape[1]
    # ...and the matrix cells (passed green, failed red) are painted below it.
    body = img[60:]
    assert _pixels_near(body, PASS_CELL) > 500
    assert _pixels_near(body, FAIL_CELL) > 200
