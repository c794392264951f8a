"""Probe: batch-8 decode on SmolLM2 shapes (random weights): which rows / step / module
diverge from transformers f32 (same device)."""
import sys
import tempfile
from pathlib import Path

import numpy as np
from transformers import DynamicCache

from conformance.judge import error_metrics
from conformance.model.harness import hf_capture, our_capture, our_model
from conformance.model.reference import hf_model
from conformance.perf.checkpoint import spec_with_layers, write_checkpoint

dev = sys.argv[1]; layers = int(sys.argv[2]); batch = int(sys.argv[3])
tdev = "cuda:0" if dev == "nvidia" else "cpu"
spec = spec_with_layers(layers)
path = write_checkpoint(spec, Path(tempfile.mkdtemp()))
rng = np.random.default_rng(0)
prompt = rng.integers(3, spec.vocab_size, (batch, 32))
feed = rng.integers(3, spec.vocab_size, (batch, 6))
for dt in sys.argv[4].split(","):
    gold = hf_model(str(path), "f32", tdev)
    ours = our_model(str(path), dt, dev)
    hc = DynamicCache(config=gold.config)
    oc = ours.new_cache(batch, 64)
    for step in range(7):
        ids = prompt if step == 0 else feed[:, step - 1:step]
        g, _ = hf_capture(gold, ids, cache=hc)
        o = our_capture(ours, ids, cache=oc)
        rows = [error_metrics(o["logits"][b, -1], g["logits"][b, -1])["nmse"] for b in range(batch)]
        print(f"{dt} step {step} ids {ids.shape}: logits NMSE per row " + " ".join(f"{x:.2g}" for x in rows))
        if max(rows) > 0.05:
            for key in ["embed_tokens"] + [f"layers.{i}.{s}" for i in range(layers) for s in ("self_attn", "residual_attn", "mlp")]:
                if key in g and key in o:
                    r = [error_metrics(o[key][b, -1], g[key][b, -1])["nmse"] for b in range(batch)]
                    if max(r) > 0.01:
                        print(f"   first divergence {key}: per row " + " ".join(f"{x:.2g}" for x in r))
                        break
            break
