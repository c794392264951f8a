"""Per-layer error plots (matplotlib, Agg), returned as PNG data URIs for embedding.

Uses matplotlib's object API (Figure + Agg canvas), not pyplot: no global figure state,
nothing to close, no display backend ever chosen.
"""

from __future__ import annotations

import base64
import io
import math

# Error metrics where larger is worse, plotted on one log axis.
PLOTTED = (("nmse", "NMSE"), ("mean_abs", "mean abs"), ("max_abs", "max abs"))
_SUB_OFFSET = {"attention": 0.0, "attention residual": 0.25, "mlp": 0.5, "mlp residual": 0.75}


def layer_position(row: dict, num_layers: int) -> float:
    """x of a captured tensor: the layer index, sub-modules spread inside the layer;
    embeddings at -1, the final norm after the last layer."""
    if row.get("layer") is None:
        return -1.0 if row.get("submodule") == "embedding" else float(num_layers)
    return float(row["layer"]) + _SUB_OFFSET.get(row.get("submodule"), 0.0)


def _value(v) -> float:
    """NaN (a gap) for what a log axis cannot show: exact zeros, non-finite, missing.
    Clamping zeros to a floor instead would stretch the axis over 20 empty decades."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) and f > 0 else math.nan


def per_layer_plot(rows: list[dict], first_divergence: dict | None, title: str) -> str:
    """Error vs layer index, one line per metric, the calibrated NMSE thresholds drawn and
    the first divergence marked. Returns a data: URI of the PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = [r["layer"] for r in rows if r.get("layer") is not None]
    num_layers = (max(layers) + 1) if layers else 0
    xs = [layer_position(r, num_layers) for r in rows]
    fig = Figure(figsize=(8.4, 3.2), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for key, label in PLOTTED:
        ax.plot(xs, [_value(r.get("metrics", {}).get(key)) for r in rows], marker="o",
                markersize=3, linewidth=1.2, label=f"{label} (ours)")
    ax.plot(xs, [_value(r.get("reference_metrics", {}).get("nmse")) for r in rows],
            color="0.55", linewidth=1, linestyle=":", label="NMSE transformers same dtype")
    if any("threshold" in r for r in rows):
        ax.plot(xs, [_value(r.get("threshold")) for r in rows], color="#c62828",
                linestyle="--", linewidth=1.2, label="NMSE threshold (localization)")
    if any("gate_threshold" in r for r in rows):
        ax.plot(xs, [_value(r.get("gate_threshold")) for r in rows], color="#c62828",
                linestyle="-.", linewidth=1, alpha=0.6, label="NMSE threshold (failure)")
    if first_divergence:
        hit = [x for x, r in zip(xs, rows) if r.get("tensor") == first_divergence.get("tensor")]
        if hit:
            ax.axvline(hit[0], color="#ef6c00", linewidth=2, alpha=0.7,
                       label="first divergence")
    zeros = any(float(r.get("metrics", {}).get(k, 1) or 0) == 0 for r in rows for k, _ in PLOTTED)
    if zeros:
        ax.text(0.01, 0.02, "exact zeros not drawn (log axis)", transform=ax.transAxes,
                fontsize=7, color="0.4")
    ax.set_yscale("log")
    ax.set_xlabel("layer index (-1 embeddings, last: final norm)")
    ax.set_ylabel("error vs float32 golden")
    ax.set_title(title, fontsize=10)
    if num_layers:
        ax.set_xticks(range(-1, num_layers + 1))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    # Fixed margins: tight_layout would measure every text artist and triple the time.
    fig.subplots_adjust(left=0.09, right=0.70, bottom=0.15, top=0.9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
