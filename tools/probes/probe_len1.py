"""Probe: where SmolLM2 f16/bf16 at one token drifts from transformers (per layer)."""
import numpy as np
import torch  # noqa: F401

from conformance.judge import error_metrics
from conformance.model.harness import hf_capture, our_capture, our_model, resolve_model
from conformance.model.prompts import prompt_ids
from conformance.model.reference import hf_model

path = resolve_model("smollm2")
golden = hf_model(str(path), "f32", "cpu")
for dt in ("f16", "bf16"):
    ref = hf_model(str(path), dt, "cuda:0")
    ours = our_model(str(path), dt, "nvidia")
    for seq in (1, 2, 9):
        ids = prompt_ids(path, 1, seq)
        g, _ = hf_capture(golden, ids)
        r, _ = hf_capture(ref, ids)
        o = our_capture(ours, ids)
        print(f"== {dt} seq={seq} tokens={ids.tolist()}")
        for key in ["embed_tokens"] + [f"layers.{i}.{s}" for i in (0, 1, 2, 5, 10, 15, 20, 25, 29) for s in ("self_attn", "mlp")] + ["layers.29", "norm", "logits"]:
            if key not in g or key not in o:
                continue
            gl, rl, ol = g[key][:, -1], r[key][:, -1], o[key][:, -1]
            eo, er = error_metrics(ol, gl), error_metrics(rl, gl)
            print(f"{key:22s} |g|max {np.abs(gl).max():9.3g} nmse ours {eo['nmse']:.3g} ref {er['nmse']:.3g} ratio {eo['nmse']/max(er['nmse'],1e-30):.2f}")
