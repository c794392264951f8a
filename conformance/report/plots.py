"""Per-layer error plots as inline SVG, written directly (no plotting library).

A report of a full run holds one plot per model check and phase/step group (dozens to
hundreds); drawing them with matplotlib costs ~0.1 s each, writing the SVG costs well
under a millisecond, stays sharp at any zoom and gives every point a tooltip (tensor and
value). Everything recorded (tensor names, model paths in titles) is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

# Where a captured tensor sits along the x axis: the layer index, its sub-modules spread
# inside the layer; the embeddings at -1, the final norm after the last layer.
_SUB_OFFSET = {"attention": 0.0, "kv cache": 0.1, "attention residual": 0.25, "mlp": 0.5,
               "mlp residual": 0.75}

WIDTH, HEIGHT = 720, 250
LEFT, RIGHT, TOP, BOTTOM = 54, 190, 22, 34
MAX_DECADES = 24


def layer_position(layer: int | None, submodule: str | None, num_layers: int,
                   tensor: str = "") -> float:
    if layer is None:
        return -1.0 if submodule == "embedding" else float(num_layers)
    value_cache = 0.05 if submodule == "kv cache" and tensor.endswith("value_cache") else 0.0
    return float(layer) + _SUB_OFFSET.get(submodule or "", 0.0) + value_cache


@dataclass
class Series:
    label: str
    color: str
    values: Sequence[float]  # NaN: no point (exact zero, non-finite, not measured)
    dash: str = ""           # SVG stroke-dasharray
    marker: str = ""         # "circle", "square", "diamond" or "" (a line only)
    failed: Sequence[bool] | None = None  # points drawn filled red
    width: float = 1.4
    line: bool = True        # False: markers only


def positive(v: object) -> float:
    """NaN for what a log axis cannot show: zeros, negatives, NaN, missing (clamping zeros
    to a floor instead would stretch the axis over 20 empty decades). +inf stays: an error
    that is not finite (a NaN or Inf in the output) is drawn as a marker on the top edge."""
    if isinstance(v, bool):
        return math.nan
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return f if f > 0 and not math.isnan(f) else math.nan


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def layer_plot(xs: Sequence[float], tensors: Sequence[str], series: Sequence[Series],
               marks: Sequence[float], num_layers: int, title: str,
               zeros: bool = False) -> Markup | None:
    """Error per layer on a log axis, one line per series, vertical marks at the localized
    tensors. None when no series has a value to draw."""
    present = [s for s in series if any(not math.isnan(v) for v in s.values)]
    values = [v for s in present for v in s.values if math.isfinite(v)]
    if not present or not xs:
        return None
    if not values:  # nothing finite: an axis around the top-edge markers
        values = [1.0]
    hi = math.ceil(math.log10(max(values)))
    lo = math.floor(math.log10(min(values)))
    lo = max(lo, hi - MAX_DECADES)
    if hi == lo:
        hi, lo = hi + 1, lo - 1
    x0, x1 = min(xs) - 0.4, max(xs) + 0.4
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def py(v: float) -> float:
        t = (math.log10(max(v, 10.0 ** lo)) - lo) / (hi - lo)
        return TOP + (1 - t) * ph

    out = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
           f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
           f'aria-label="{escape(title)}">',
           f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>',
           f'<text x="{LEFT}" y="14" font-size="12" font-weight="600">{escape(title)}</text>']
    # y: one grid line per decade, labelled (every other one when there are many).
    step = 1 if hi - lo <= 10 else 2
    for d in range(lo, hi + 1):
        y = py(10.0 ** d)
        out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{y:.1f}" y2="{y:.1f}" '
                   'stroke="#e3e3e3"/>')
        if (d - lo) % step == 0:
            out.append(f'<text x="{LEFT - 4}" y="{y + 3.5:.1f}" font-size="10" '
                       f'text-anchor="end">1e{d}</text>')
    # x: layer indices; -1 is the embeddings, num_layers the final norm.
    first, last = math.ceil(x0), math.floor(x1)
    every = max(1, math.ceil((last - first + 1) / 24))
    for i in range(first, last + 1):
        if (i - first) % every and i not in (-1, num_layers):
            continue
        x = px(i)
        label = "emb" if i == -1 else "norm" if i == num_layers else str(i)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + ph}" '
                   'stroke="#f0f0f0"/>')
        out.append(f'<text x="{x:.1f}" y="{TOP + ph + 13}" font-size="10" '
                   f'text-anchor="middle">{label}</text>')
    out.append(f'<text x="{LEFT + pw / 2:.0f}" y="{HEIGHT - 4}" font-size="10" '
               'text-anchor="middle" fill="#555">layer (emb: embeddings, norm: final norm; '
               'sub-modules inside a layer)</text>')
    out.append(f'<text x="12" y="{TOP + ph / 2:.0f}" font-size="10" fill="#555" '
               f'text-anchor="middle" transform="rotate(-90 12 {TOP + ph / 2:.0f})">'
               'NMSE vs float32 golden</text>')
    for x in marks:
        out.append(f'<line class="mark" x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{TOP}" '
                   f'y2="{TOP + ph}" stroke="#ef6c00" stroke-width="3" opacity="0.55"/>')
    for s in present:
        pts = [(px(x), py(v), i) for i, (x, v) in enumerate(zip(xs, s.values))
               if math.isfinite(v)]
        for i, (x, v) in enumerate(zip(xs, s.values)):
            if v == math.inf:
                out.append(f'<path class="nonfinite" d="M{px(x):.1f},{TOP + 1}l5,9h-10z" '
                           f'fill="#c62828"><title>{escape(tensors[i])}: {escape(s.label)} '
                           'not finite (NaN or Inf in the output)</title></path>')
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        if len(pts) > 1 and s.line:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" '
                       f'stroke-width="{s.width}"{dash}/>')
        if not s.marker and len(pts) != 1:
            continue
        for x, y, i in pts:
            bad = bool(s.failed and s.failed[i])
            fill = "#c62828" if bad else s.color
            tip = f"<title>{escape(tensors[i])}: {escape(s.label)} {_fmt(s.values[i])}" + \
                  (" (over its threshold)" if bad else "") + "</title>"
            if s.marker == "diamond":
                out.append(f'<path d="M{x:.1f},{y - 4:.1f}l4,4l-4,4l-4,-4z" '
                           f'fill="{fill}">{tip}</path>')
            elif s.marker == "square":
                out.append(f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" '
                           f'fill="{fill}">{tip}</rect>')
            else:
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{3.6 if bad else 2.6}" '
                           f'fill="{fill}">{tip}</circle>')
    # Legend, right of the axes.
    lx, ly = LEFT + pw + 12, TOP + 8
    for s in present:
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        if s.line:
            out.append(f'<line x1="{lx}" x2="{lx + 22}" y1="{ly}" y2="{ly}" '
                       f'stroke="{s.color}" stroke-width="{s.width + 0.4}"{dash}/>')
        else:
            out.append(f'<path d="M{lx + 11},{ly - 4}l4,4l-4,4l-4,-4z" fill="{s.color}"/>')
        out.append(f'<text x="{lx + 27}" y="{ly + 3.5}" font-size="10">{escape(s.label)}</text>')
        ly += 15
    if marks:
        out.append(f'<line x1="{lx}" x2="{lx + 22}" y1="{ly}" y2="{ly}" stroke="#ef6c00" '
                   'stroke-width="3" opacity="0.55"/>')
        out.append(f'<text x="{lx + 27}" y="{ly + 3.5}" font-size="10">localized here</text>')
        ly += 15
    out.append(f'<circle cx="{lx + 11}" cy="{ly}" r="3.6" fill="#c62828"/>')
    out.append(f'<text x="{lx + 27}" y="{ly + 3.5}" font-size="10">over its threshold</text>')
    if any(v == math.inf for s in present for v in s.values):
        ly += 15
        out.append(f'<path d="M{lx + 11},{ly - 5}l5,9h-10z" fill="#c62828"/>')
        out.append(f'<text x="{lx + 27}" y="{ly + 3.5}" font-size="10">not finite</text>')
    if zeros:
        out.append(f'<text x="{LEFT + 4}" y="{TOP + ph - 4}" font-size="9" fill="#666">'
                   'exact zeros not drawn (log axis)</text>')
    out.append("</svg>")
    return Markup("".join(out))
