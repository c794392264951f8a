"""output[i] = weight[input[i]]: the token embedding lookup on the device (absent from
InfiniCore 0.1.0, where the model gathers rows on the host). No workspace."""

from __future__ import annotations

from ..tensor import Tensor
from ._base import CachedOp

_op = CachedOp("Embedding")


def embedding(output: Tensor, input: Tensor, weight: Tensor) -> Tensor:
    _op([output, input, weight])
    return output
