"""dst = src element by element across arbitrary strides (the strided copy)."""

from __future__ import annotations

from ..tensor import Tensor
from ._base import CachedOp

_op = CachedOp("Rearrange", ("dst", "src"), has_workspace=False)


def rearrange(dst: Tensor, src: Tensor) -> Tensor:
    _op([dst, src])
    return dst


def contiguous(src: Tensor) -> Tensor:
    """src itself if already contiguous, else a contiguous copy on the same device."""
    if src.is_contiguous():
        return src
    return rearrange(Tensor.empty(src.shape, src.dtype, src.device), src)
