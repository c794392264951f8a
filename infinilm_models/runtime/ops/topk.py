"""The k largest (or smallest) values along `dim` and their indices (absent from
InfiniCore 0.1.0).

values and indices have the input's shape with `dim` of size k; values have the input's
dtype, indices are int32 (upstream's kernels write int32_t whatever the descriptor says, and
its descriptor checks neither dtypes nor shapes, so both are checked here). sorted=True
orders each row largest (or smallest) first; sorted=False returns the same set in any order.
Among equal values any one is a correct pick.
"""

from __future__ import annotations

import ctypes

from ..dtypes import DType
from ..tensor import Tensor
from ._base import CachedOp

_op = CachedOp("TopK")


def topk(values: Tensor, indices: Tensor, input: Tensor, k: int, dim: int = -1,
         largest: bool = True, sorted: bool = True) -> Tensor:
    if dim < 0:
        dim += input.ndim
    if not 0 <= dim < input.ndim:
        raise ValueError(f"topk: dim {dim} out of range for a {input.ndim}-d input")
    if not 0 < k <= input.shape[dim]:
        raise ValueError(f"topk: k must be in [1, {input.shape[dim]}], got {k}")
    want = tuple(k if d == dim else s for d, s in enumerate(input.shape))
    for name, t in (("values", values), ("indices", indices)):
        if tuple(t.shape) != want:
            raise ValueError(f"topk: {name} has shape {list(t.shape)}, expected {list(want)}")
    if values.dtype != input.dtype:
        raise ValueError(f"topk: values are {values.dtype.short}, the input "
                         f"{input.dtype.short}")
    if indices.dtype != DType.I32:
        raise ValueError(f"topk: indices must be i32 (InfiniCore writes int32), got "
                         f"{indices.dtype.short}")
    scalars = (ctypes.c_size_t(k), ctypes.c_size_t(dim), bool(largest), bool(sorted))
    _op([values, indices, input], *scalars, create_params=scalars)
    return values
