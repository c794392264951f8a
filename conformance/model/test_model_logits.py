"""Logits of the last token and of every position against the golden, for prompt lengths
1, short with batch 2, and long (crossing 128-wide tiles); plus top-1 agreement, top-5
overlap and the KL divergence of the softmax."""

from __future__ import annotations

import numpy as np
import pytest

from conformance.judge import logits_metrics, nmse

from .faithful import alternative
from .harness import hf_forward
from .prompts import prompt_ids

# len1 is four one-token prompts, not one: the calibrated bound compares our error with
# the reference's, and over a single token both are single draws (on the H100, one
# token's f16 reference error was 3.5x lower than at the other positions of the same
# run, and ours failed a 4x bound against it with no sub-module standing out; see
# docs/measurements.md).
SHAPES = {"len1": (4, 1), "short_bs2": (2, 9), "long": (1, 130)}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_model_logits(model_name, model_path, dtype, shape, runtimes, verify):
    golden_m, ref_m, ours_m = runtimes
    ids = prompt_ids(model_path, *SHAPES[shape], verify)
    golden = hf_forward(golden_m, ids)["logits"]
    ref = golden if ref_m is golden_m else hf_forward(ref_m, ids)["logits"]
    alt_m = alternative(ref_m)  # f16/bf16: bounds on the spread of correct implementations
    alt = hf_forward(alt_m, ids)["logits"] if alt_m is not None else None
    ours_all = ours_m.forward(ids, all_logits=True).numpy().astype(np.float64)
    ours_last = ours_m.forward(ids).numpy().astype(np.float64)

    # Accuracy is judged over all positions: one token's logits (one draw of 30 layers'
    # rounding) against another single draw is too noisy a statistic for a 4x bound.
    c = verify.calibrated(ours_all, ref, golden, "model_logits", dtype,
                          "all positions: logits", alternative=alt)
    lm, lr = logits_metrics(ours_all, golden), logits_metrics(ref, golden)
    verify.measure("all positions: agreement with the golden", lm, lr)
    verify.calibrated_value("all positions: mean KL(golden || ours)", lm["kl"], lr["kl"],
                            "model_logits_kl", dtype, "kl",
                            alternative=logits_metrics(alt, golden)["kl"] if alt is not None
                            else None)
    # The last-token path (final norm and lm_head on the last rows only) is another op
    # sequence for the same numbers: it must agree with the all-positions path as two
    # correct computations agree (as cached vs recompute).
    verify.calibrated_value("last-token path vs all-positions path (ours)",
                            nmse(ours_last[:, -1], ours_all[:, -1]),
                            c.metrics.get("reference_nmse", 0.0), "cache_vs_recompute", dtype,
                            "nmse", alternative=c.metrics.get("alternative_nmse"))
    verify.measure("last token: agreement with the golden",
                   logits_metrics(ours_last[:, -1], golden[:, -1]),
                   logits_metrics(ref[:, -1], golden[:, -1]))
