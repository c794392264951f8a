"""`infinilm-conformance bench-history STORE`: benchmarks over commits, one page.

Reads every history line of a baseline store (baselines.py: one line per run compared with
`compare --baseline last-green`), and draws, per benchmark, its median time over commits
as inline SVG (asv publish's graphs, without a server): one line per (machine, device,
build), so numbers of different hardware or InfiniCore builds are never joined; a run the
gate found slower than the pinned baseline is a red ring; each point links to its run's
report and says its commit, run, median and verdict on hover. The page is one file with
no script and no external resource.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from markupsafe import Markup, escape

from conformance.results import atomic_write_text

from .baselines import read_history

COLORS = ("#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#4e342e",
          "#283593", "#558b2f", "#37474f")
WIDTH, HEIGHT = 760, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 56


@dataclass
class Point:
    x: int
    median_s: float
    commit: str
    run_id: str
    href: str
    verdict: str
    green: bool


@dataclass
class Line:
    label: str          # machine · device · build
    color: str
    points: list[Point] = field(default_factory=list)


def _series_label(entry: dict) -> str:
    key = entry.get("key") or {}
    return " · ".join(str(key.get(k, "?")) for k in ("machine", "device", "build"))


def _href(entry: dict, out_dir: Path) -> str:
    run_dir = entry.get("run_dir")
    if not run_dir:
        return ""
    target = Path(run_dir) / "index.html"
    try:
        return os.path.relpath(target, out_dir).replace(os.sep, "/")
    except ValueError:
        return target.as_uri()


def collect(entries: list[dict], out_dir: Path) -> tuple[list[str], dict[str, list[Line]]]:
    """(commits in order of their first run, benchmark -> its lines)."""
    entries = sorted((e for e in entries if e.get("benchmarks")),
                     key=lambda e: (str(e.get("started_at") or ""), str(e.get("run_id"))))
    commits: list[str] = []
    for e in entries:
        c = str(e.get("git_commit") or "unknown")[:10]
        if c not in commits:
            commits.append(c)
    labels = sorted({_series_label(e) for e in entries})
    color = {label: COLORS[i % len(COLORS)] for i, label in enumerate(labels)}
    plots: dict[str, dict[str, Line]] = {}
    for e in entries:
        label = _series_label(e)
        commit = str(e.get("git_commit") or "unknown")[:10]
        for name, b in sorted(e["benchmarks"].items()):
            med = b.get("median")
            if not isinstance(med, (int, float)) or not med > 0:
                continue
            line = plots.setdefault(name, {}).setdefault(label, Line(label, color[label]))
            line.points.append(Point(commits.index(commit), float(med), commit,
                                     str(e.get("run_id")), _href(e, out_dir),
                                     str(b.get("verdict") or "baseline"),
                                     bool(e.get("green"))))
    return commits, {name: list(lines.values()) for name, lines in sorted(plots.items())}


def _axis(values: list[float]) -> tuple[float, float, bool, list[float]]:
    """(low, high, log?, ticks): linear from 0 with round ticks, or log10 decades when
    lines of very different speed share a plot."""
    lo, hi = min(values), max(values)
    if hi / lo > 20:
        a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        return a, b, True, [10.0 ** e for e in range(a, b + 1)]
    raw = hi * 1.1 / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    top = step * math.ceil(hi * 1.05 / step)
    return 0.0, top, False, [step * i for i in range(int(round(top / step)) + 1)]


def plot(name: str, commits: list[str], lines: list[Line]) -> Markup:
    values = [p.median_s * 1e3 for line in lines for p in line.points]
    lo, hi, log, ticks = _axis(values)
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = max(len(commits) - 1, 1)

    def sx(x: float) -> float:
        return LEFT + (x / n if len(commits) > 1 else 0.5) * w

    def sy(ms: float) -> float:
        v = (math.log10(ms) - lo) / (hi - lo) if log else (ms - lo) / (hi - lo)
        return TOP + h - v * h

    out = [f'<svg class="trend" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
           f'height="{HEIGHT}" role="img" aria-label="{escape(name)}">',
           f'<rect x="{LEFT}" y="{TOP}" width="{w}" height="{h}" fill="#fafafa" '
           'stroke="#bbb"/>']
    for t in ticks:
        y = sy(t)
        out.append(f'<line x1="{LEFT}" x2="{LEFT + w}" y1="{y:.1f}" y2="{y:.1f}" '
                   'stroke="#e0e0e0"/>')
        out.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" '
                   f'font-size="10">{t:.3g}</text>')
    out.append(f'<text x="12" y="{TOP + h / 2:.0f}" font-size="10" transform="rotate(-90 12 '
               f'{TOP + h / 2:.0f})" text-anchor="middle">median ms{" (log)" if log else ""}'
               '</text>')
    step = max(1, math.ceil(len(commits) / 12))
    for i, c in enumerate(commits):
        if i % step == 0 or i == len(commits) - 1:
            out.append(f'<text x="{sx(i):.1f}" y="{TOP + h + 14}" font-size="9" '
                       f'text-anchor="end" transform="rotate(-35 {sx(i):.1f} {TOP + h + 14})">'
                       f'{escape(c)}</text>')
    for line in lines:
        pts = sorted(line.points, key=lambda p: p.x)
        out.append(f'<g class="series" data-series="{escape(line.label)}">')
        if len(pts) > 1:
            coords = " ".join(f"{sx(p.x):.1f},{sy(p.median_s * 1e3):.1f}" for p in pts)
            out.append(f'<polyline points="{coords}" fill="none" stroke="{line.color}" '
                       'stroke-width="1.6"/>')
        for p in pts:
            cx, cy = sx(p.x), sy(p.median_s * 1e3)
            slow = p.verdict == "slower"
            tip = (f"{line.label}\ncommit {p.commit}, run {p.run_id}\nmedian "
                   f"{p.median_s * 1e3:.4g} ms, {p.verdict}" + ("" if p.green else ", red run"))
            dot = (f'<circle class="point{" regression" if slow else ""}" cx="{cx:.1f}" '
                   f'cy="{cy:.1f}" r="{5 if slow else 3.5}" fill="{line.color}"'
                   + (' stroke="#c62828" stroke-width="3"' if slow else "")
                   + f"><title>{escape(tip)}</title></circle>")
            out.append(f'<a href="{escape(p.href)}">{dot}</a>' if p.href else dot)
        out.append("</g>")
    out.append("</svg>")
    return Markup("".join(out))


STYLE = """
body{font:14px system-ui,sans-serif;margin:0;color:#212121}
header{background:#263238;color:#fff;padding:12px 20px}
main{padding:8px 20px}
section.bench{margin:18px 0;border-top:1px solid #ddd}
h2{font-size:15px;margin:10px 0 4px;font-family:monospace}
.legend span{display:inline-block;margin-right:16px}
.legend i{display:inline-block;width:14px;height:4px;vertical-align:middle;margin-right:5px}
.muted{color:#666}
"""


def render(store: Path, commits: list[str], plots: dict[str, list[Line]], runs: int) -> str:
    labels = sorted({(line.label, line.color) for lines in plots.values() for line in lines})
    regressions = sum(1 for lines in plots.values() for line in lines for p in line.points
                      if p.verdict == "slower")
    parts = ['<!doctype html><html lang="en"><head><meta charset="utf-8">',
             "<title>benchmark history</title>", f"<style>{STYLE}</style></head><body>",
             f'<header><b>Benchmark history</b> · {runs} runs · {len(commits)} commits · '
             f'{len(plots)} benchmarks · <span id="regressions">{regressions} regressions'
             '</span></header><main>',
             f'<p class="muted">From the baseline store {escape(str(store))}, '
             f'{time.strftime("%Y-%m-%d %H:%M:%S")}. Median of the timed rounds per run; one '
             "line per machine · device · InfiniCore build; a red ring: slower than the "
             "pinned baseline (median over the factor and the rank test). Click a point for "
             "its run's report.</p>",
             '<div class="legend" id="legend">'
             + "".join(f'<span><i style="background:{c}"></i>{escape(label)}</span>'
                       for label, c in labels) + "</div>"]
    if not plots:
        parts.append('<p id="empty">No benchmark has been recorded in this store yet: '
                     "run the benchmarks and <code>infinilm-conformance compare RUN "
                     "--baseline last-green</code> (tox -e bench-compare does both).</p>")
    for name, lines in plots.items():
        parts.append(f'<section class="bench" data-benchmark="{escape(name)}">'
                     f"<h2>{escape(name)}</h2>{plot(name, commits, lines)}</section>")
    parts.append("</main></body></html>\n")
    return "".join(str(p) for p in parts)


def write_history(store: str | Path, out: str | Path) -> tuple[Path, int]:
    """Write the page to `out`; returns (path, number of series drawn over all plots)."""
    store, out = Path(store), Path(out)
    if not store.is_dir():
        raise ValueError(f"{store}: no baseline store here (compare --baseline last-green "
                         "fills one)")
    entries = read_history(store)
    out_dir = out.resolve().parent
    commits, plots = collect(entries, out_dir)
    runs = len({e.get("run_id") for e in entries if e.get("benchmarks")})
    atomic_write_text(out, render(store, commits, plots, runs))
    return out, sum(len(lines) for lines in plots.values())
