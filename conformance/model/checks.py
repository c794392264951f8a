"""Judging model-level results: calibrated per-tensor comparison with first-divergence
localization, and the logits metrics (top-1 agreement, top-k overlap, KL)."""

from __future__ import annotations

import numpy as np

from conformance.judge import Calibrated, error_metrics

from .harness import Divergence, execution_order


def compare_activations(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray],
                        golden: dict[str, np.ndarray], cal: Calibrated, num_layers: int,
                        gate: Calibrated | None = None
                        ) -> tuple[list[dict], Divergence | None, Divergence | None]:
    """Every captured tensor in execution order. Returns the rows, the first divergence
    (first tensor over the strict threshold `cal`: where to look) and the first breach of
    the failure threshold `gate` (what fails the check; `cal` when no gate is given)."""
    rows: list[dict] = []
    first: Divergence | None = None
    breach: Divergence | None = None
    gate = gate or cal
    for name, layer, sub in execution_order(num_layers):
        o, g, r = ours[name], golden[name], ref[name]
        if o.shape != g.shape:
            raise AssertionError(f"{name}: shape {o.shape} != reference {g.shape}")
        mine, theirs = error_metrics(o, g), error_metrics(r, g)
        threshold = cal.threshold(theirs["nmse"])
        finite = bool(np.isfinite(o).all())
        ok = finite and mine["nmse"] <= threshold
        rows.append({"tensor": name, "layer": layer, "submodule": sub, "passed": ok,
                     "threshold": threshold, "metrics": mine, "reference_metrics": theirs,
                     "finite": finite})
        if not ok and first is None:
            first = Divergence(name, layer, sub, mine["nmse"] if finite else float("nan"),
                               threshold)
        hard = gate.threshold(theirs["nmse"])
        rows[-1]["gate_threshold"] = hard
        if (not finite or mine["nmse"] > hard) and breach is None:
            breach = Divergence(name, layer, sub, mine["nmse"] if finite else float("nan"),
                                hard)
    return rows, first, breach


def softmax64(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def logits_metrics(ours: np.ndarray, golden: np.ndarray, k: int = 5) -> dict[str, float]:
    """Over all positions: top-1 agreement, mean top-k overlap, mean KL(golden || ours)."""
    o = ours.reshape(-1, ours.shape[-1])
    g = golden.reshape(-1, golden.shape[-1])
    top1 = float(np.mean(o.argmax(-1) == g.argmax(-1)))
    ko = np.argsort(-o, axis=-1)[:, :k]
    kg = np.argsort(-g, axis=-1)[:, :k]
    overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ko, kg)]))
    p, q = softmax64(g), softmax64(o)
    kl = float(np.mean(np.sum(p * (np.log(p + 1e-300) - np.log(q + 1e-300)), axis=-1)))
    return {"top1_agreement": top1, f"top{k}_overlap": overlap, "kl": max(kl, 0.0)}
