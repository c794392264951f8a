"""Probe: host time per decode step and per op call (SmolLM2 shapes, random weights)."""
import collections
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch  # noqa: F401

from conformance.perf.checkpoint import spec_with_layers, write_checkpoint
from infinilm_models import AutoLlamaModel
from infinilm_models.runtime import Device
from infinilm_models.runtime.ops import _base

dev, dt = sys.argv[1], sys.argv[2]
spec = spec_with_layers(30)
path = write_checkpoint(spec, Path(tempfile.mkdtemp()))
m = AutoLlamaModel.from_pretrained(path, dev, dt, progress=False)
D = Device.parse(dev)
for batch in (1, 8):
    cache = m.new_cache(batch, 256)
    m.forward(np.full((batch, 32), 5), cache=cache)
    for _i in range(40):
        m.forward(np.full((batch, 1), 7), cache=cache)
    D.synchronize()
    # same positions again: descriptors exist, so this is the steady state
    cache.truncate(32)
    n0 = _base.descriptors_created()
    t0 = time.perf_counter()
    for _i in range(40):
        m.forward(np.full((batch, 1), 7), cache=cache)
    t1 = time.perf_counter()
    D.synchronize()
    t2 = time.perf_counter()
    print(f"b{batch}: issue {1e3*(t1-t0)/40:.2f} ms/step, with final sync {1e3*(t2-t0)/40:.2f} ms/step, descriptors created {(_base.descriptors_created()-n0)}")
    # per op: count and host time (wrapper overhead included)
    stats = collections.defaultdict(lambda: [0, 0.0])
    orig = _base.CachedOp.__call__
    def timed(self, *a, orig=orig, stats=stats, **k):
        t = time.perf_counter(); r = orig(self, *a, **k); s = stats[self.name]; s[0] += 1; s[1] += time.perf_counter() - t; return r
    _base.CachedOp.__call__ = timed
    cache.truncate(32)
    t0 = time.perf_counter()
    for _i in range(20):
        m.forward(np.full((batch, 1), 7), cache=cache)
    D.synchronize()
    tt = time.perf_counter() - t0
    _base.CachedOp.__call__ = orig
    tot = sum(v[1] for v in stats.values())
    print(f"  per step: {sum(v[0] for v in stats.values())/20:.0f} op calls, {1e3*tot/20:.2f} ms inside op calls of {1e3*tt/20:.2f} ms")
    for k, (n, t) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
        print(f"  {k:16s} {n/20:6.0f} calls/step {1e6*t/n:7.1f} us/call")
    # raw C issue cost: the same gemm call repeated
