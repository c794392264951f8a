"""Probe: is InfiniCore's NVIDIA swiglu (half arithmetic for f16) what moves SmolLM2's
one-token logits away from transformers? (a) op level vs torch, (b) the model with swiglu
done on the host in float32 (rounded once), as transformers' silu(gate) * up is."""
import sys

import ml_dtypes
import numpy as np
import torch

from conformance.judge import error_metrics
from infinilm_models.runtime import Tensor, ops

dev = sys.argv[1] if len(sys.argv) > 1 else "nvidia"
tdev = "cuda" if dev == "nvidia" else "cpu"
TD = {"f16": torch.float16, "bf16": torch.bfloat16}
NP = {"f16": np.float16, "bf16": ml_dtypes.bfloat16}
rng = np.random.default_rng(0)
for dt in ("f16", "bf16"):
    for scale in (1.0, 4.0, 16.0):
        g = (rng.standard_normal((64, 1536)) * scale).astype(NP[dt]).astype(np.float64)
        u = (rng.standard_normal((64, 1536)) * scale).astype(NP[dt]).astype(np.float64)
        exp = g / (1 + np.exp(-g)) * u
        c = Tensor.zeros(g.shape, dt, dev)
        ops.swiglu(c, Tensor.from_numpy(u, dev, dt), Tensor.from_numpy(g, dev, dt))
        ours = c.numpy().astype(np.float64)
        tg, tu = (torch.tensor(x, dtype=TD[dt], device=tdev) for x in (g, u))
        tt = (torch.nn.functional.silu(tg) * tu).double().cpu().numpy()
        fused = (g / (1 + np.exp(-g)) * u).astype(np.float32).astype(NP[dt]).astype(np.float64)
        eo, et, ef = (error_metrics(x, exp) for x in (ours, tt, fused))
        print(f"swiglu {dt} scale {scale:4}: nmse ours {eo['nmse']:.3g} torch {et['nmse']:.3g} "
              f"round-once {ef['nmse']:.3g} | max_rel ours {eo['max_rel']:.3g} torch {et['max_rel']:.3g}")

if len(sys.argv) > 2 and sys.argv[2] == "ops-only":
    sys.exit(0)

from conformance.model.harness import hf_capture, our_capture, our_model, resolve_model
from conformance.model.prompts import prompt_ids
from conformance.model.reference import hf_model

real_swiglu = ops.swiglu


def host_swiglu(c, up, gate):
    g = gate.numpy().astype(np.float64); u = up.numpy().astype(np.float64)
    c.copy_from_numpy(g / (1 + np.exp(-g)) * u)
    return c


path = resolve_model("smollm2")
golden = hf_model(str(path), "f32", "cpu")
for dt in ("f16", "bf16"):
    ref = hf_model(str(path), dt, "cuda:0" if dev == "nvidia" else "cpu")
    ours = our_model(str(path), dt, dev)
    for seq in (1, 9):
        ids = prompt_ids(path, 1, seq)
        g, _ = hf_capture(golden, ids)
        r, _ = hf_capture(ref, ids)
        row = []
        for name, fn in (("infinicore swiglu", real_swiglu), ("host swiglu", host_swiglu)):
            ops.swiglu = fn
            try:
                o = our_capture(ours, ids)
            finally:
                ops.swiglu = real_swiglu
            eo = error_metrics(o["logits"][:, -1], g["logits"][:, -1])["nmse"]
            em = error_metrics(o["layers.2.mlp"][:, -1], g["layers.2.mlp"][:, -1])["nmse"]
            row.append(f"{name}: logits {eo:.3g} layer2.mlp {em:.3g}")
        er = error_metrics(r["logits"][:, -1], g["logits"][:, -1])["nmse"]
        erm = error_metrics(r["layers.2.mlp"][:, -1], g["layers.2.mlp"][:, -1])["nmse"]
        print(f"{dt} seq={seq} last-token NMSE vs golden | transformers {dt}: logits {er:.3g} layer2.mlp {erm:.3g} | " + " | ".join(row))
