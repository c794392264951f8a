"""results.json -> one self-contained index.html (inline CSS, plots as inline SVG).

The renderer reads the run only through `RunRecord.load` and arranges what the run
recorded: statuses, the verdict, comparisons with their bounds, localizations, crashes and
bundles are the record's own, never recomputed. Counting statuses per matrix cell, picking
the status that colours a cell (the most severe one present) and picking the worst case
of an op to show first is presentation, not judgement.

One module per view: format (numbers, cells, anchors), matrices, sections (per model and
per op), cards (a check's comparisons, measurements, generations, localizations), layers
(per-layer plots), environment (environment and performance tables), view (the whole).
"""

from __future__ import annotations

import time
from pathlib import Path

import jinja2

from conformance.record import RunRecord, results_path
from conformance.results import atomic_write_text

from .format import DTYPE_ORDER, NO_DTYPE, SHORT, cell, dtype_of, fmt_number, safe_href
from .view import build_view

__all__ = ["DTYPE_ORDER", "NO_DTYPE", "build_view", "cell", "dtype_of", "make_env",
           "render_html", "render_run"]


def make_env() -> jinja2.Environment:
    """Autoescape always on: model paths, messages and params come from user configs and
    must never become markup. StrictUndefined turns a template typo into an error."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("conformance.report", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True)
    env.filters["num"] = fmt_number
    env.globals["SHORT"] = SHORT
    return env


def render_html(run: RunRecord, plots: bool = True, junit: str | None = None) -> str:
    view = build_view(run, plots)
    view["junit"] = junit
    view["generated_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return make_env().get_template("report.html.j2").render(**view)


def render_run(run: str | Path, out: str | Path | None = None, plots: bool = True) -> Path:
    """Render <run>/index.html (or `out`) from <run>/results.json, atomically: the page is
    built in memory, written to a temporary file beside the target and renamed, so a
    failure leaves no index.html and no temporary file."""
    src = results_path(run)
    record = RunRecord.load(src)
    target = Path(out) if out is not None else src.parent / "index.html"
    # Linked even if not there yet: pytest's junitxml writes it after the plugin renders.
    html = render_html(record, plots, safe_href(record.junit_xml))
    atomic_write_text(target, html)
    return target
