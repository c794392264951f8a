"""Per-layer error of a model check: one plot and one table per (phase, decode step), from
the record's typed rows (record.TensorRow)."""

from __future__ import annotations

import math
from dataclasses import asdict

from conformance.record import CheckRecord, ErrorPoint, TensorRow

from .format import slug, where_label
from .plots import Series, layer_plot, layer_position, positive


def _values(points: list[ErrorPoint | None], key: str, cache: list[bool],
            kv: bool = False) -> list[float]:
    return [positive(getattr(p, key)) if p is not None and c == kv else math.nan
            for p, c in zip(points, cache)]


def layer_series(acc: list[ErrorPoint], iso: list[ErrorPoint | None],
                 cache: list[bool]) -> list[Series]:
    """The lines of a per-layer plot. The KV cache is a different quantity from the
    hidden-state stream: its own markers, not joined into the lines."""

    def over(ps: list[ErrorPoint | None]) -> list[bool]:
        return [p is not None and p.passed is False for p in ps]

    return [
        Series("accumulated: ours", "#1565c0", _values(acc, "nmse", cache), marker="circle",
               failed=over(acc)),
        Series("accumulated: transformers", "#757575", _values(acc, "reference_nmse", cache),
               dash="2 3"),
        Series("isolated sub-module: ours", "#8e24aa", _values(iso, "nmse", cache),
               marker="square", failed=over(iso)),
        Series("isolated: transformers", "#ce93d8", _values(iso, "reference_nmse", cache),
               dash="2 3"),
        Series("KV cache: ours", "#00897b", _values(acc, "nmse", cache, True),
               marker="diamond", failed=over(acc), line=False),
        Series("KV cache isolated: ours", "#6d4c41", _values(iso, "nmse", cache, True),
               marker="diamond", failed=over(iso), line=False),
        Series("strict bound (accumulated)", "#c62828", _values(acc, "threshold", cache),
               dash="6 4", width=1.1),
        Series("gate (failure bound)", "#c62828", _values(acc, "gate_threshold", cache),
               dash="9 3 2 3", width=1.0),
        Series("isolated bound", "#8e24aa", _values(iso, "threshold", cache), dash="6 4",
               width=1.0),
    ]


def _table_row(x: TensorRow) -> dict:
    return {"phase": x.phase, "step": x.step, "tensor": x.tensor, "layer": x.layer,
            "submodule": x.submodule, "acc": asdict(x.accumulated),
            "iso": asdict(x.isolated) if x.isolated is not None else None}


def layer_groups(r: CheckRecord, title: str, plots: bool, anchor: str) -> list[dict]:
    """One group per (phase, step): its plot, its rows, the tensors localized in it."""
    layers = [x.layer for x in r.tensors if x.layer is not None]
    num_layers = max(layers) + 1 if layers else 0
    groups: dict[tuple[str, int | None], list[TensorRow]] = {}
    for x in r.tensors:
        groups.setdefault((x.phase, x.step), []).append(x)
    out = []
    for (phase, step), grp in groups.items():
        localized = {loc.tensor for loc in r.localization if loc.phase == phase and
                     (phase == "prefill" or loc.step == step or step is None)}
        xs = [layer_position(x.layer, x.submodule, num_layers, x.tensor) for x in grp]
        label = where_label(phase, step)
        plot = None
        if plots:
            series = layer_series([x.accumulated for x in grp], [x.isolated for x in grp],
                                  [x.submodule == "kv cache" for x in grp])
            zeros = any(p is not None and p.nmse == 0
                        for x in grp for p in (x.accumulated, x.isolated))
            plot = layer_plot(xs, [x.tensor for x in grp], series,
                              [xv for xv, x in zip(xs, grp) if x.tensor in localized],
                              num_layers, f"{title} · {label}", zeros)
        over = any(x.accumulated.passed is False or
                   (x.isolated is not None and x.isolated.passed is False) for x in grp)
        out.append({"label": label, "plot": plot, "rows": [_table_row(x) for x in grp],
                    "localized": localized, "over": over,
                    "anchor": slug(anchor, phase, step if step is not None else "")})
    return out


def split_groups(groups: list[dict]) -> tuple[list[dict], list[dict]]:
    """Groups shown at once (the first, and every one with a localization or a tensor
    over its bound) and the rest, folded."""
    first = [i == 0 or bool(g["localized"]) or g["over"] for i, g in enumerate(groups)]
    return ([g for g, f in zip(groups, first) if f], [g for g, f in zip(groups, first) if not f])
