"""Probe: how far two runs of one correct-but-different half-precision backend move a
top-2 logit gap (the evidence for tolerances.toml [generation_margin]).

    PYTHONPATH=. python tools/probes/probe_greedy_swing.py gemm_half_other50 [models]

Installs the planted backend (conformance/selftest/plants.py), runs ours in bf16 twice on
the same 2 x 9-token prompt (each run draws its own roundings) and prints, per model, the
RMS difference of the logits and the largest change of the first run's top-2 gap.
"""
import sys

import numpy as np

import conformance.selftest.plants as plants
from conformance.model.harness import our_model, resolve_model
from conformance.model.prompts import prompt_ids

plant = sys.argv[1]
if plant != "-":
    plants.install(plant)
for name in (sys.argv[2].split(",") if len(sys.argv) > 2 else
             ["tiny-sharded", "tiny-gqa", "tiny-tied", "smollm2"]):
    path = resolve_model(name)
    ours = our_model(str(path), "bf16", "cpu")
    ids = prompt_ids(path, 2, 9)
    a, b = (ours.forward(ids, all_logits=True).numpy().astype(np.float64) for _ in range(2))
    top2 = np.argsort(a, -1)[..., -2:]
    ga, gb = np.take_along_axis(a, top2, -1), np.take_along_axis(b, top2, -1)
    swing = np.abs((ga[..., 1] - ga[..., 0]) - (gb[..., 1] - gb[..., 0]))
    print(f"{name} {plant}: logits RMS {np.sqrt((a ** 2).mean()):.3g}, RMS difference of two "
          f"runs {np.sqrt(((a - b) ** 2).mean()):.3g}, median top-2 gap "
          f"{np.median(ga[..., 1] - ga[..., 0]):.3g}, largest change of a top-2 gap "
          f"{swing.max():.3g}")
