"""dst = src element by element across arbitrary strides (the strided copy)."""

from __future__ import annotations

from ..library import InfiniError
from ..tensor import Tensor
from ._base import CachedOp

_op = CachedOp("Rearrange")


def rearrange(dst: Tensor, src: Tensor) -> Tensor:
    _op([dst, src])
    return dst


# Signatures a backend refused whole, so later calls split them without asking again.
_split_needed: set[tuple] = set()


def copy(dst: Tensor, src: Tensor) -> Tensor:
    """rearrange, but where the backend refuses the layout as unsupported (InfiniCore 0.1.0
    on NVIDIA answers DEVICE_ARCHITECTURE_NOT_SUPPORTED for some 5-D head permutations
    with small head_dim), copy slice by slice along the leading dim instead."""
    key = (dst.signature(), src.signature())
    if key not in _split_needed:
        try:
            return rearrange(dst, src)
        except InfiniError as e:
            if not e.unsupported or dst.ndim < 2 or dst.shape[0] < 2:
                raise
            _split_needed.add(key)
    for i in range(dst.shape[0]):
        copy(dst.select(0, i), src.select(0, i))
    return dst


def contiguous(src: Tensor) -> Tensor:
    """src itself if already contiguous, else a contiguous copy on the same device."""
    if src.is_contiguous():
        return src
    return rearrange(Tensor.empty(src.shape, src.dtype, src.device), src)
