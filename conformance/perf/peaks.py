"""Peak throughput per device, so a benchmark can say what fraction of the machine it used.

GPU figures are the vendor's datasheet numbers (dense, no sparsity). A CPU has no such
table here: its bandwidth peak is what a large numpy memcpy achieves on this machine,
measured once per session, and its FLOP peak is left unknown (None) rather than guessed.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Peak:
    name: str
    bytes_per_s: float | None  # memory bandwidth
    flops: dict[str, float | None]  # per dtype: f32, f16, bf16
    source: str

    def to_dict(self) -> dict:
        return {"name": self.name, "bytes_per_s": self.bytes_per_s, "flops": self.flops,
                "source": self.source}


# Matched by substring of torch.cuda.get_device_name(), first match wins (SXM before PCIe:
# "NVIDIA H100 80GB HBM3" is the SXM part, "NVIDIA H100 PCIe" / "H100 NVL" differ).
GPU_PEAKS: list[tuple[str, Peak]] = [
    ("H200", Peak("NVIDIA H200", 4.8e12,
                  {"f32": 67e12, "f16": 989e12, "bf16": 989e12}, "H200 SXM datasheet")),
    ("H100 PCIe", Peak("NVIDIA H100 PCIe", 2.0e12,
                       {"f32": 51e12, "f16": 756e12, "bf16": 756e12}, "H100 PCIe datasheet")),
    ("H100 NVL", Peak("NVIDIA H100 NVL", 3.9e12,
                      {"f32": 60e12, "f16": 835e12, "bf16": 835e12}, "H100 NVL datasheet")),
    ("H100", Peak("NVIDIA H100 SXM", 3.35e12,
                  {"f32": 67e12, "f16": 989e12, "bf16": 989e12}, "H100 SXM datasheet")),
    ("A100", Peak("NVIDIA A100", 2.0e12,
                  {"f32": 19.5e12, "f16": 312e12, "bf16": 312e12}, "A100 80GB SXM datasheet")),
]


@functools.lru_cache(maxsize=1)
def cpu_memcpy_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Best of a few large copies; a copy reads and writes, so 2 * nbytes per copy."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in first
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def peak_for(device_type: str, gpu_name: str | None = None) -> Peak:
    if device_type == "cpu":
        return Peak("cpu", cpu_memcpy_bandwidth(), {"f32": None, "f16": None, "bf16": None},
                    "numpy memcpy bandwidth measured this session; no FLOP peak")
    for key, peak in GPU_PEAKS:
        if gpu_name and key in gpu_name:
            return peak
    return Peak(gpu_name or device_type, None, {"f32": None, "f16": None, "bf16": None},
                "device not in conformance/perf/peaks.py")


def throughput(seconds: float, nbytes: int, flops: int, dtype: str, peak: Peak) -> dict:
    """Achieved GB/s and GFLOP/s and their fraction of the device's peak."""
    gbps = nbytes / seconds / 1e9
    gflops = flops / seconds / 1e9
    pf = peak.flops.get(dtype)
    return {
        "bytes": nbytes, "flops": flops,
        "GB_per_s": round(gbps, 4), "GFLOP_per_s": round(gflops, 4),
        "frac_peak_bw": round(gbps * 1e9 / peak.bytes_per_s, 5) if peak.bytes_per_s else None,
        "frac_peak_flops": round(gflops * 1e9 / pf, 5) if pf else None,
    }
