"""silu(x) = x * sigmoid(x), and silu_and_mul (vLLM's layout: input [..., 2d] holds gate
then up, output [..., d] = silu(gate) * up). Absent from InfiniCore 0.1.0."""

from __future__ import annotations

from ..tensor import Tensor
from ._base import CachedOp

_silu = CachedOp("Silu")
_silu_and_mul = CachedOp("SiluAndMul")


def silu(output: Tensor, input: Tensor) -> Tensor:
    _silu([output, input])
    return output


def silu_and_mul(output: Tensor, input: Tensor) -> Tensor:
    _silu_and_mul([output, input])
    return output
