"""residual_out = a + b; y = rms_norm(residual_out) * weight (upstream's fused residual
add + the next layer's norm; absent from InfiniCore 0.1.0)."""

from __future__ import annotations

import ctypes

from ..tensor import Tensor
from ._base import CachedOp

_op = CachedOp("AddRMSNorm")


def add_rms_norm(y: Tensor, residual_out: Tensor, a: Tensor, b: Tensor, weight: Tensor,
                 eps: float) -> Tensor:
    _op([y, residual_out, a, b, weight], create_params=(ctypes.c_float(eps),))
    return y
