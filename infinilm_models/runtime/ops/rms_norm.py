"""y = x / sqrt(mean(x^2) + eps) * w over the last dimension (2-D or 3-D)."""

from __future__ import annotations

import ctypes

from ..tensor import Tensor
from ._base import CachedOp

_op = CachedOp("RMSNorm")


def rms_norm(y: Tensor, x: Tensor, w: Tensor, eps: float) -> Tensor:
    # eps is fixed at descriptor creation, so it is part of the cache key.
    _op([y, x, w], create_params=(ctypes.c_float(eps),))
    return y
