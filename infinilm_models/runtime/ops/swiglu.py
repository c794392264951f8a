"""c = up * silu(gate), LLaMA's MLP activation (InfiniCore's argument order: c, a=up, b=gate).

Any rank on the CPU (the elementwise framework). Upstream's NVIDIA kernel after 0.1.0
(swiglu/info.h, SwiGLUCudaInfo) indexes 2-D and 3-D tensors only and checks no rank: keep
c, up and gate 2-D or 3-D there."""

from __future__ import annotations

from ..tensor import Tensor
from ._base import CachedOp

_op = CachedOp("SwiGLU")


def swiglu(c: Tensor, up: Tensor, gate: Tensor) -> Tensor:
    _op([c, up, gate])
    return c
