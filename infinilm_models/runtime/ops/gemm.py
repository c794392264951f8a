"""c = alpha * (a @ b) + beta * c, for 2-D or batched 3-D tensors (batch 1 broadcasts)."""

from __future__ import annotations

from ..tensor import Tensor
from ._base import CachedOp

_op = CachedOp("Gemm")


def gemm(c: Tensor, a: Tensor, b: Tensor, alpha: float = 1.0, beta: float = 0.0) -> Tensor:
    """Each matrix needs one unit stride (row- or column-major); a transposed view of a
    [out, in] weight is column-major, so `x @ W.T` needs no copy."""
    _op([c, a, b], float(alpha), float(beta))
    return c


def prepare_gemm(c: Tensor, a: Tensor, b: Tensor) -> None:
    """Create (and cache) the descriptor for these layouts now, computing nothing: a decode
    loop whose attention shapes grow by one position per step prepares them up front."""
    _op.descriptor([c, a, b])
