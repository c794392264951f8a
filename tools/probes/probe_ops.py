"""Probe: f16/bf16 gemm accuracy at decode shapes (M=1) vs torch; random_sample half scans."""
import numpy as np
import torch  # noqa: F401  (before InfiniCore)

from conformance.judge import error_metrics
from conformance.ops.common import host, rng_for, to_device
from conformance.ops.references.random_sample import logits_for, reference
from infinilm_models.runtime import Tensor, ops

dev = "nvidia"
TD = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
for dt in ("f16", "bf16", "f32"):
    for (m, k, n) in [(1, 576, 576), (1, 576, 1536), (1, 1536, 576), (1, 576, 49152),
                      (3, 64, 65), (16, 576, 576), (16, 1536, 576), (16, 576, 49152)]:
        rng = rng_for("probe", m, k, n, dt)
        a = host((m, k), dt, rng); w = host((n, k), dt, rng, 1 / np.sqrt(k))
        exp = a @ w.T
        c = Tensor.zeros((m, n), dt, dev)
        ops.gemm(c, to_device(a, dev, dt), to_device(w, dev, dt).transpose(-1, -2))
        ours = c.numpy().astype(np.float64)
        ta = torch.tensor(a, dtype=TD[dt], device="cuda"); tw = torch.tensor(w, dtype=TD[dt], device="cuda")
        tt = (ta @ tw.T).double().cpu().numpy()
        tl = torch.nn.functional.linear(ta, tw).double().cpu().numpy()
        print(f"gemm {dt} M={m} K={k} N={n}: nmse ours {error_metrics(ours, exp)['nmse']:.3g} "
              f"torch@ {error_metrics(tt, exp)['nmse']:.3g} F.linear {error_metrics(tl, exp)['nmse']:.3g}"
              f" ours==torch {np.array_equal(ours, tl)}")
res = Tensor.empty((), "i32", dev)
for dt in ("bf16", "f16"):
    bad = []
    for topk in (20, 50, 100, 256):
        for rv in (0.5, 0.8, 0.9, 0.95, 0.99):
            for i in range(6):
                name = f"scan_k{topk}_r{rv}_{i}"
                lg = logits_for(256, dt, (name, dt))
                exp = reference(lg, rv, 1.0, topk, 1.0)
                ops.random_sample(res, to_device(lg, dev, dt), rv, 1.0, topk, 1.0)
                got = int(res.numpy())
                if got != exp:
                    bad.append((name, got, exp))
    # the existing case
    lg = logits_for(256, dt, ("topk50_full_p", dt))
    ops.random_sample(res, to_device(lg, dev, dt), 0.9, 1.0, 50, 1.0)
    print(dt, "topk50_full_p:", int(res.numpy()), "expected", reference(lg, 0.9, 1.0, 50, 1.0))
    print(dt, f"random_sample mismatches {len(bad)}/120:", bad[:20])
