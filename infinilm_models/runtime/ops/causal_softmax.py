"""Softmax over the last dim with a causal mask aligned to the bottom-right corner.

For x [batch, q_len, kv_len], row i may attend to keys 0 .. kv_len - q_len + i, which is
the mask of q_len new tokens appended after kv_len - q_len cached ones.
"""

from __future__ import annotations

from ..tensor import Tensor
from ._base import CachedOp

_op = CachedOp("CausalSoftmax")


def causal_softmax(y: Tensor, x: Tensor) -> Tensor:
    _op([y, x])
    return y


def prepare_causal_softmax(y: Tensor, x: Tensor) -> None:
    """Create (and cache) the descriptor for these layouts now, computing nothing."""
    _op.descriptor([y, x])
