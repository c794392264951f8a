"""c = up * silu(gate), LLaMA's MLP activation (InfiniCore's argument order: c, a=up, b=gate)."""

from __future__ import annotations

from ..tensor import Tensor
from ._base import CachedOp

_op = CachedOp("SwiGLU")


def swiglu(c: Tensor, up: Tensor, gate: Tensor) -> Tensor:
    _op([c, up, gate])
    return c
