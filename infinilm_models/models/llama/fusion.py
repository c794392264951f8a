"""Which fused InfiniCore ops the model runs: chosen once, at construction, from what the
loaded build exports (its `Build` record, runtime/capabilities.py).

    FUSIONS          one row per fused op: the C ops it needs and the plain sequence it
                     replaces (what runs on a build without it, e.g. InfiniCore 0.1.0)
    plan(...)        the set of fusions a model uses: "auto" (every one the build has),
                     "plain" (none: the reference path the fused one is checked against),
                     or the names asked for (an error if the build lacks one)

The modules read the plan's names through `Fused` (one boolean per fusion) and keep both
forms side by side; the capture points keep their names in both, recorded from the fused
buffers (the residual after attention is add_rms_norm's residual_out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ...runtime import Device, DType, InfiniError, Tensor, ops
from ...runtime.capabilities import Build


def _z(device: Device, dtype: DType, *shape: int, of: str | DType | None = None) -> Tensor:
    return Tensor.zeros(shape, of or dtype, device)


@dataclass(frozen=True)
class Fusion:
    name: str
    ops: tuple[str, ...]  # C op names (infiniop<Name>) it needs, all exported
    replaces: str
    # One call on tiny tensors: an op can be exported and still have no kernel for the
    # device or the dtype (upstream's silu_and_mul and kv_caching on the CPU answer
    # DEVICE_TYPE_NOT_SUPPORTED), which only a call tells.
    probe: Callable[[Device, DType], object]
    # Dtypes it is tried in at all: upstream's f32 paged attention descriptor kills the
    # process (known defect nvidia-paged-attention-f32-segfault), so it is never probed.
    dtypes: tuple[DType, ...] = (DType.F32, DType.F16, DType.BF16)
    # Model shapes its kernels take (upstream's paged attention: head_dim 64/128/192/256)
    fits: Callable[[object], bool] = lambda config: True
    # Chosen by "auto": False for a fusion that is correct but measured slower than the
    # plain sequence (then only asked for by name).
    auto: bool = True


FUSIONS: tuple[Fusion, ...] = (
    Fusion("add_rms_norm", ("AddRMSNorm",),
           "the attention residual folded into o_proj (beta = 1), then rms_norm",
           lambda d, t: ops.add_rms_norm(_z(d, t, 1, 8), _z(d, t, 1, 8), _z(d, t, 1, 8),
                                         _z(d, t, 1, 8), _z(d, t, 8), 1e-5)),
    Fusion("embedding", ("Embedding",),
           "the row gather on the host and one host-to-device copy",
           lambda d, t: ops.embedding(_z(d, t, 1, 8), _z(d, t, 1, of="i64"), _z(d, t, 4, 8))),
    Fusion("silu_and_mul", ("SiluAndMul",), "swiglu over the gate and up halves",
           lambda d, t: ops.silu_and_mul(_z(d, t, 1, 8), _z(d, t, 1, 16))),
    # Appends the new K/V at positions read on the device, so the fixed-shape decode step
    # needs no slot and no copy after it: the whole step can be one graph.
    Fusion("kv_caching", ("KVCaching",),
           "the fixed decode step's slot copy and the copy to its position after the step",
           lambda d, t: ops.kv_caching(_z(d, t, 1, 1, 4, 8), _z(d, t, 1, 1, 4, 8),
                                       _z(d, t, 1, 1, 1, 8), _z(d, t, 1, 1, 1, 8),
                                       _z(d, t, 1, of="i64"))),
    # The fixed decode step's attention over the cache as one kernel: each row's cache is
    # one block of max_len positions (block table [b]), its length read on the device.
    Fusion("paged_attention", ("PagedAttention", "KVCaching"),
           "the fixed decode step's mask copy, scores gemm, softmax and values gemm",
           lambda d, t: ops.paged_attention(
               _z(d, t, 1, 1, 64), _z(d, t, 1, 1, 64), _z(d, t, 1, 1, 4, 64),
               _z(d, t, 1, 1, 4, 64), _z(d, t, 1, 1, of="i64"),
               Tensor.from_numpy(np.ones(1, dtype=np.int64), d, "i64"), 0.125),
           dtypes=(DType.F16, DType.BF16),
           # no sliding window: the kernel attends to every cached position
           fits=lambda config: config.head_dim in (64, 128, 192, 256)
           and not any(getattr(config, "windows", ())),
           # H200, SmolLM2-135M shapes, bf16, 128 decode steps replayed as one graph:
           # 326 ms with it against 184 ms without (2026-12-02): a whole row's cache as
           # one block is not what its kernel is tuned for. Correct (the benchmark's
           # accuracy gate passed), so it stays, by name.
           auto=False),
)
BY_NAME = {f.name: f for f in FUSIONS}
_probed: dict[tuple[str, Device, DType], bool] = {}


def works(fusion: Fusion, build: Build, device: Device, dtype: DType) -> bool:
    """The build exports the fusion's ops and they run on this device and dtype."""
    if not all(build.has_op(op) for op in fusion.ops) or dtype not in fusion.dtypes:
        return False
    key = (fusion.name, device, dtype)
    if key not in _probed:
        try:
            fusion.probe(device, dtype)
            _probed[key] = True
        except InfiniError:
            _probed[key] = False
    return _probed[key]


def available(build: Build, device: Device, dtype: DType,
              config: object | None = None) -> frozenset[str]:
    """The fusions `build` (capabilities.Build) has and that run on this device/dtype."""
    return frozenset(f.name for f in FUSIONS if (config is None or f.fits(config))
                     and works(f, build, device, dtype))


def plan(want: str | Iterable[str], build: Build, device: Device,
         dtype: DType, config: object | None = None) -> frozenset[str]:
    """The fusions to use (see the module docstring); ValueError naming what is wrong."""
    if want == "plain":
        return frozenset()
    have = available(build, device, dtype, config)
    if want == "auto":
        return frozenset(n for n in have if BY_NAME[n].auto)
    if isinstance(want, str):
        raise ValueError(f"fused must be 'auto', 'plain' or a list of fusions "
                         f"({', '.join(BY_NAME)}), got {want!r}")
    names = frozenset(want)
    unknown = sorted(names - set(BY_NAME))
    if unknown:
        raise ValueError(f"unknown fusion(s) {unknown}; known: {sorted(BY_NAME)}")
    missing = sorted(names - have)
    if missing:
        raise ValueError(f"fusion(s) {missing} need ops this build does not run on "
                         f"{device} in {dtype}: " + ", ".join(
                             f"{n} ({'/'.join(BY_NAME[n].ops)})" for n in missing))
    return names


@dataclass(frozen=True)
class Fused:
    """The plan as flags the modules read (one decision, made at construction)."""

    add_rms_norm: bool = False
    embedding: bool = False
    silu_and_mul: bool = False
    kv_caching: bool = False
    paged_attention: bool = False

    @classmethod
    def of(cls, names: Iterable[str]) -> Fused:
        names = frozenset(names)
        return cls(**{f.name: f.name in names for f in FUSIONS})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in FUSIONS if getattr(self, f.name))
