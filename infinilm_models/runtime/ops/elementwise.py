"""Binary elementwise ops (same shapes; any strides, stride 0 broadcasts)."""

from __future__ import annotations

from ..tensor import Tensor
from ._base import CachedOp

_add = CachedOp("Add")
_mul = CachedOp("Mul")


def add(c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """c = a + b (the residual connections; c may alias a)."""
    _add([c, a, b])
    return c


def mul(c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """c = a * b."""
    _mul([c, a, b])
    return c
