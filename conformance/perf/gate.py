"""The accuracy gate of the model benchmarks: last-token logits of the benchmarked
implementation judged against transformers float32 on the same device and weights (see
test_perf_model.py's docstring). A plain module: the model and parallel benchmarks share it.
"""

from __future__ import annotations

import numpy as np

from conformance.model.reference import hf_model


def gate(verify, tolerances, dtype: str, ours: np.ndarray | None, ref: np.ndarray,
         golden: np.ndarray, what: str) -> None:
    """Last-token logits [batch, vocab] of the benchmarked implementation vs the golden,
    through the judge: ours within the calibrated bound, both finite, each row's top-1
    equal to the golden's unless that is a near tie. A failing gate stops the benchmark:
    a wrong implementation is not timed."""
    for name, x in (("ours", ours), ("hf", ref)):
        if x is None:
            continue
        verify.require(verify.finite(f"gate {what}: {name} logits", x))
        if name == "ours":
            verify.require(verify.calibrated(x, ref, golden, "model_logits", dtype,
                                             f"gate {what}: ours logits"))
        # the near tie at each row: at least twice how far transformers' own logits in the
        # dtype are from the golden's there (judge.greedy_tokens), not only a fixed margin:
        # at long contexts half precision drifts further
        side = "ours" if name == "ours" else f"transformers {dtype}"
        verify.require(verify.greedy_tokens(
            x.argmax(-1)[:, None], golden.argmax(-1)[:, None], golden[:, None], dtype,
            f"gate {what}: {side} top-1 per row", sides=(side, "golden f32"),
            spread=np.abs(ref - golden).max(-1)[:, None]))


def hf_logits(model, ids: np.ndarray, tdev: str) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = model(torch.tensor(ids, device=tdev), use_cache=True)
    return out.logits[:, -1].to("cpu", torch.float64).numpy()


def golden_logits(path, ids: np.ndarray, tdev: str) -> np.ndarray:
    return hf_logits(hf_model(str(path), "f32", tdev), ids, tdev)
