"""Logits of the last token and of every position against the golden, for prompt lengths
1, short with batch 2, and long (crossing 128-wide tiles); plus top-1 agreement, top-5
overlap and the KL divergence of the softmax."""

from __future__ import annotations

import numpy as np
import pytest

from .checks import logits_metrics
from .conftest import prompt_ids
from .harness import hf_capture

# len1 is four one-token prompts, not one: the calibrated bound compares our error with
# the reference's, and over a single token both are single draws (on the H100, one
# token's f16 reference error was 3.5x lower than at the other positions of the same
# run, and ours failed a 4x bound against it with no sub-module standing out; see
# docs/measurements.md).
SHAPES = {"len1": (4, 1), "short_bs2": (2, 9), "long": (1, 130)}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_model_logits(model_name, model_path, dtype, shape, runtimes, verify, infini_device):
    if model_name == "smollm2" and shape == "long" and infini_device.type == "cpu":
        # 130 tokens x 30 layers x 3 runtimes is minutes on 2 cores; the GPU run carries it.
        shape = "short_bs2"
    golden_m, ref_m, ours_m = runtimes
    ids = prompt_ids(model_path, *SHAPES[shape], verify)
    golden = hf_capture(golden_m, ids)["logits"]
    ref = golden if ref_m is golden_m else hf_capture(ref_m, ids)["logits"]
    ours_all = ours_m.forward(ids, all_logits=True).numpy().astype(np.float64)
    ours_last = ours_m.forward(ids).numpy().astype(np.float64)

    for what, o, g, r in (("last token", ours_last[:, -1], golden[:, -1], ref[:, -1]),
                          ("all positions", ours_all, golden, ref)):
        verify.calibrated(o, r, g, "model_logits", dtype, f"{what}: logits")
        lm, lr = logits_metrics(o, g), logits_metrics(r, g)
        verify.info[what] = {"logits": lm, "reference_logits": lr}
        # KL gates the mean over all positions: one position's KL (one distribution) is
        # too noisy a statistic to earn a 4x bound from.
        if what == "all positions":
            verify.calibrated_value(f"{what}: mean KL(golden || ours)", lm["kl"], lr["kl"],
                                    "model_logits_kl", dtype, "kl")
