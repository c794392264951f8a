"""`--dump-tensors DIR`: the tensors of a failing model check, for a kernel engineer.

For each failing model check whose layer comparison found where it goes wrong, one folder
`DIR/<check>/`:

    tensors.npz   <side>/<capture point> arrays, float64, [batch, tokens, hidden] (KV
                  caches [batch, kv heads, positions, head dim]); sides: ours, golden,
                  reference (transformers in the tested dtype), and the isolated runs
                  ours_isolated / reference_isolated (each sub-module fed the golden's
                  input); points: every capture point of the first failing layer and that
                  layer's input (the previous layer's output, or the embeddings)
    index.json    the check, its localization, the command that reproduces it, and per
                  point its shape and NMSE against the golden on each side
    README.txt    the same, to read

Decode checks judge their steps together: their arrays are the steps joined along the
token axis (the index says so). A failing model check without a layer comparison (logits,
generation, ...) gets the index and the command only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

SIDES = (("ours", "ours"), ("golden", "golden"), ("reference", "ref"),
         ("ours_isolated", "ours_iso"), ("reference_isolated", "ref_iso"))


def slug(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::", 1)[-1])[:120]


def failing_result(results: list):
    """The layer comparison (model/checks.CaptureResult) that localized a failure first."""
    for r in results:
        if r.localizations and any(c.counts_against for c in r.comparisons):
            return r
    return None


def points_for(result, layer: int | None, tensor: str) -> list[str]:
    """Every capture point of `layer` (or the failing point itself outside the layers) and
    the input of that layer, in execution order."""
    names = [row.tensor for row in result.rows]
    if layer is None:
        chosen = [tensor]
        at = names.index(tensor) if tensor in names else 0
        before = [n for n in names[:at] if re.fullmatch(r"layers\.\d+|embed_tokens", n)]
        return before[-1:] + chosen
    entry = "embed_tokens" if layer == 0 else f"layers.{layer - 1}"
    mine = [row.tensor for row in result.rows if row.layer == layer]
    return ([entry] if entry in names else []) + mine


def dump(target: Path, nodeid: str, message: str, command: str, results: list) -> Path:
    """Write the folder of one failing check; returns it."""
    out = target / slug(nodeid)
    out.mkdir(parents=True, exist_ok=True)
    found = failing_result(results)
    index: dict = {"nodeid": nodeid, "message": message[:2000], "command": command,
                   "localization": None, "points": [], "sides": []}
    if found is not None:
        loc = found.localizations[0]
        index["localization"] = {"phase": loc.phase, "step": loc.step, "layer": loc.layer,
                                 "tensor": loc.tensor, "submodule": loc.submodule,
                                 "isolated": loc.isolated, "description": loc.description}
        if loc.phase == "decode" and loc.steps:
            index["note"] = (f"decode: the {loc.steps} steps are joined along the token axis "
                             "(one token per row and step)")
        rows = {row.tensor: row for row in found.rows}
        arrays = {}
        names = points_for(found, loc.layer, loc.tensor)
        present = [(label, key) for label, key in SIDES if found.sides.get(key) is not None]
        index["sides"] = [label for label, _ in present]
        for name in names:
            entry: dict = {"point": name, "shapes": {}}
            row = rows.get(name)
            if row is not None:
                entry.update(submodule=row.submodule, layer=row.layer,
                             nmse_ours=row.accumulated.nmse,
                             nmse_reference=row.accumulated.reference_nmse,
                             bound=row.accumulated.gate_threshold)
                if row.isolated is not None:
                    entry.update(nmse_ours_isolated=row.isolated.nmse,
                                 nmse_reference_isolated=row.isolated.reference_nmse,
                                 bound_isolated=row.isolated.threshold)
            for label, key in present:
                value = found.sides[key].get(name)
                if value is not None:
                    arrays[f"{label}/{name}"] = np.asarray(value, dtype=np.float64)
                    entry["shapes"][label] = list(np.shape(value))
            index["points"].append(entry)
        np.savez(out / "tensors.npz", **arrays)
    (out / "index.json").write_text(json.dumps(index, indent=1, default=str) + "\n")
    (out / "README.txt").write_text(_readme(index))
    return out


def _readme(index: dict) -> str:
    lines = [f"Tensors of the failing check {index['nodeid']}", "",
             "Reproduce it:", f"  {index['command']}", ""]
    loc = index["localization"]
    if loc is None:
        lines.append("This check has no layer comparison that localized the failure: no "
                     "tensors (index.json has its message).")
        return "\n".join(lines) + "\n"
    lines += [f"Where: {loc['description']}", "",
              "tensors.npz holds <side>/<point> (float64), sides: " + ", ".join(index["sides"]),
              "  import numpy as np; t = np.load('tensors.npz'); "
              "t['ours/" + index["points"][-1]["point"] + "']", ""]
    if index.get("note"):
        lines += [index["note"], ""]
    lines.append("point                        ours NMSE    transformers NMSE   (vs golden)")
    for p in index["points"]:
        if "nmse_ours" in p:
            lines.append(f"  {p['point']:<26} {p['nmse_ours']:<12.4g} {p['nmse_reference']:.4g}")
        else:
            lines.append(f"  {p['point']:<26} (input of the layer)")
    return "\n".join(lines) + "\n"
