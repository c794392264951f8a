"""GPU: the replayed decode step of SmolLM2-135M's shapes (seeded weights), kernel by kernel.

    python3 tools/gpu/profile_step.py [--whole] [--dtype bf16] [--batch 1]

For each context (prompt tokens, positions allocated) it prefills, captures the fixed
step (decode_step.py), replays STEPS steps under torch.profiler (CUPTI sees every kernel
of the process, InfiniCore's too) and prints the kernels of one step: name, calls, mean
and total microseconds, and the step's GPU time and wall time. --whole attends over the
whole allocation at every step (the step before spans) for the before/after table.
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np
import torch  # before InfiniCore (plugin rule: its CUDA libraries first)

from conformance.perf.checkpoint import SMOLLM2_135M, write_checkpoint
from infinilm_models import AutoLlamaModel
from infinilm_models.models.llama import decode_step

CONTEXTS = ((32, 160), (2048, 2176), (72, 256), (72, 4096))
STEPS = 32


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--whole", action="store_true")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", default="/tmp/ckpt-profile")
    args = p.parse_args()
    if args.whole:
        decode_step.FixedDecoder.span = lambda self, start: self.cache.max_len + 1
    path = write_checkpoint(SMOLLM2_135M, __import__("pathlib").Path(args.out), bf16=True)
    model = AutoLlamaModel.from_pretrained(path, "nvidia", args.dtype, progress=False)
    rng = np.random.default_rng(0)
    for prompt_len, allocated in CONTEXTS:
        prompt = rng.integers(3, 40000, (args.batch, prompt_len))
        cache = model.new_cache(args.batch, allocated)
        model.forward(prompt, cache=cache)
        d = model.fixed_decoder(cache, graph=True)
        feed = rng.integers(3, 40000, (args.batch, STEPS + 4))
        for i in range(4):  # eager, capture, replays
            d.step(feed[:, i]).numpy()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for i in range(4, 4 + STEPS):
                d.step(feed[:, i])
            model.device.synchronize()
            wall = (time.perf_counter() - t0) / STEPS
        kernels = collections.defaultdict(lambda: [0, 0.0])
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                k = kernels[e.name[:70]]
                k[0] += 1
                k[1] += e.device_time_total if hasattr(e, "device_time_total") else \
                    e.cuda_time_total
        gpu = sum(v[1] for v in kernels.values()) / STEPS
        n = sum(v[0] for v in kernels.values()) / STEPS
        print(f"== {args.dtype} b{args.batch} prompt {prompt_len} allocated {allocated} "
              f"{'whole allocation' if args.whole else 'spans'}: span {d.last_span}, "
              f"{n:.0f} kernels/step, GPU {gpu:.0f} us/step, wall {wall * 1e6:.0f} us/step, "
              f"{args.batch / wall:.0f} tok/s, graphs {d.graphs}")
        for name, (calls, us) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:14]:
            print(f"   {calls / STEPS:6.1f}/step {us / calls:8.2f} us  {us / STEPS:8.1f} us/step  "
                  f"{name}")
        d.close()


if __name__ == "__main__":
    main()
