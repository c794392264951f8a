"""`Tensor`: a dtype, shape, element strides and offset over a device buffer.

Views (`narrow`, `permute`, `view`, `as_strided`...) share the buffer and copy nothing;
InfiniCore ops take the strides as they are, so a transposed weight or a stride-0
repeat of KV heads reaches a kernel without a copy when the op accepts it.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence

import numpy as np

from .device import Device
from .dtypes import DType
from .memory import DeviceBuffer, MemcpyKind, memcpy, zero_fill


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides = []
    acc = 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= max(size, 1)
    return tuple(reversed(strides))


class Tensor:
    __slots__ = ("buffer", "dtype", "shape", "strides", "offset")

    def __init__(self, buffer: DeviceBuffer, dtype: DType, shape: Sequence[int],
                 strides: Sequence[int] | None = None, offset: int = 0) -> None:
        self.buffer = buffer
        # Views are made on every op call of a forward: keep this path lean (no generator
        # expressions, one pass over the dims), but never skip the bounds check.
        self.dtype = dtype if type(dtype) is DType else DType.parse(dtype)
        self.shape = shape = tuple(map(int, shape))
        self.strides = strides = (tuple(map(int, strides)) if strides is not None
                                  else contiguous_strides(shape))
        self.offset = offset = int(offset)  # in elements
        if len(strides) != len(shape):
            raise ValueError(f"shape {shape} and strides {strides} differ in rank")
        if shape and min(shape) < 0:
            raise ValueError(f"negative size in shape {shape}")
        if strides and min(strides) < 0:
            raise ValueError(f"negative strides are not supported: {strides}")
        if 0 not in shape:
            hi = 1
            for size, st in zip(shape, strides):
                hi += (size - 1) * st
            if offset < 0 or (offset + hi) * self.dtype.itemsize > buffer.nbytes:
                raise ValueError(
                    f"view shape={shape} strides={strides} offset={offset} "
                    f"({self.dtype.short}) does not fit its {buffer.nbytes}-byte buffer"
                )

    # -- construction -------------------------------------------------------------

    @classmethod
    def empty(cls, shape: Sequence[int], dtype: DType | str, device: Device | str) -> Tensor:
        dev = Device.parse(device)
        dt = DType.parse(dtype)
        n = math.prod(shape)
        return cls(DeviceBuffer(dev, n * dt.itemsize), dt, shape)

    @classmethod
    def zeros(cls, shape: Sequence[int], dtype: DType | str, device: Device | str) -> Tensor:
        t = cls.empty(shape, dtype, device)
        zero_fill(t.buffer)
        return t

    @classmethod
    def from_numpy(cls, array: np.ndarray, device: Device | str,
                   dtype: DType | str | None = None) -> Tensor:
        """Copy a host array to a new contiguous device tensor (converting dtype if asked)."""
        dt = DType.parse(dtype) if dtype is not None else DType.parse(array.dtype)
        host = _contiguous(array, dt)
        t = cls.empty(host.shape, dt, device)
        memcpy(t.data_ptr, host.ctypes.data, host.nbytes, MemcpyKind.H2D, t.device)
        return t

    def copy_from_numpy(self, array: np.ndarray) -> Tensor:
        """Overwrite this (contiguous) tensor in place; reuses the allocation."""
        if not self.is_contiguous():
            raise ValueError("copy_from_numpy needs a contiguous destination; use ops.rearrange")
        host = _contiguous(array, self.dtype)
        if host.shape != self.shape:
            raise ValueError(f"shape mismatch: tensor {self.shape}, array {host.shape}")
        memcpy(self.data_ptr, host.ctypes.data, host.nbytes, MemcpyKind.H2D, self.device)
        return self

    def numpy(self) -> np.ndarray:
        """A host copy, contiguous, in this tensor's dtype (bfloat16 via ml_dtypes)."""
        if self.numel == 0:
            return np.empty(self.shape, dtype=self.dtype.numpy)
        itemsize = self.dtype.itemsize
        lo, hi = self._extent()
        span = np.empty(hi - lo, dtype=self.dtype.numpy)
        memcpy(span.ctypes.data, self.data_ptr + lo * itemsize, span.nbytes, MemcpyKind.D2H,
               self.device)
        view = np.lib.stride_tricks.as_strided(
            span, shape=self.shape, strides=[s * itemsize for s in self.strides])
        return np.array(view, copy=True)

    # -- properties ---------------------------------------------------------------

    @property
    def device(self) -> Device:
        return self.buffer.device

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def data_ptr(self) -> int:
        return self.buffer.ptr + self.offset * self.dtype.itemsize

    @property
    def c_ptr(self) -> ctypes.c_void_p:
        return ctypes.c_void_p(self.data_ptr)

    def _extent(self) -> tuple[int, int]:
        """Element range [lo, hi) touched relative to offset (strides are non-negative)."""
        if self.numel == 0:
            return 0, 0
        return 0, sum((s - 1) * st for s, st in zip(self.shape, self.strides)) + 1

    def is_contiguous(self) -> bool:
        expected = contiguous_strides(self.shape)
        return all(size == 1 or st == ex
                   for size, st, ex in zip(self.shape, self.strides, expected))

    def signature(self) -> tuple:
        """What an InfiniCore descriptor depends on: dtype, shape, strides (not the data)."""
        return (int(self.dtype), self.shape, self.strides)

    def __repr__(self) -> str:
        return (f"Tensor({self.dtype.short}, shape={list(self.shape)}, "
                f"strides={list(self.strides)}, offset={self.offset}, device={self.device})")

    def describe(self) -> str:
        return f"{self.dtype.short}{list(self.shape)} strides={list(self.strides)}"

    # -- zero-copy views ----------------------------------------------------------

    def as_strided(self, shape: Sequence[int], strides: Sequence[int],
                   offset: int | None = None) -> Tensor:
        """Any view of the same buffer; stride 0 repeats (e.g. KV heads for GQA)."""
        return Tensor(self.buffer, self.dtype, shape, strides,
                      self.offset if offset is None else offset)

    def _dim(self, dim: int) -> int:
        if not -self.ndim <= dim < self.ndim:
            raise IndexError(f"dim {dim} out of range for a {self.ndim}-d tensor")
        return dim % self.ndim

    def narrow(self, dim: int, start: int, length: int) -> Tensor:
        d = self._dim(dim)
        if start < 0 or length < 0 or start + length > self.shape[d]:
            raise IndexError(
                f"narrow({dim}, {start}, {length}) out of range for size {self.shape[d]}")
        shape = list(self.shape)
        shape[d] = length
        return Tensor(self.buffer, self.dtype, shape, self.strides,
                      self.offset + start * self.strides[d])

    def select(self, dim: int, index: int) -> Tensor:
        """Drop `dim`, keeping position `index` (like t[:, index])."""
        d = self._dim(dim)
        if not 0 <= index < self.shape[d]:
            raise IndexError(f"index {index} out of range for size {self.shape[d]}")
        shape = self.shape[:d] + self.shape[d + 1:]
        strides = self.strides[:d] + self.strides[d + 1:]
        return Tensor(self.buffer, self.dtype, shape, strides,
                      self.offset + index * self.strides[d])

    def permute(self, *dims: int) -> Tensor:
        order = [self._dim(d) for d in dims]
        if sorted(order) != list(range(self.ndim)):
            raise ValueError(f"permute{tuple(dims)} is not a permutation of {self.ndim} dims")
        return Tensor(self.buffer, self.dtype, [self.shape[d] for d in order],
                      [self.strides[d] for d in order], self.offset)

    def transpose(self, dim0: int, dim1: int) -> Tensor:
        order = list(range(self.ndim))
        a, b = self._dim(dim0), self._dim(dim1)
        order[a], order[b] = order[b], order[a]
        return self.permute(*order)

    def view(self, *shape: int) -> Tensor:
        """Reinterpret a contiguous tensor with a new shape (one -1 allowed)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = list(shape)
        if shape.count(-1) > 1:
            raise ValueError("only one dimension can be -1")
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            shape[shape.index(-1)] = self.numel // known if known else 0
        if math.prod(shape) != self.numel:
            raise ValueError(f"cannot view {list(self.shape)} as {shape}: sizes differ")
        if not self.is_contiguous():
            raise ValueError(
                f"view of a non-contiguous tensor {self!r}; copy it first (ops.rearrange)")
        return Tensor(self.buffer, self.dtype, shape, None, self.offset)

    reshape = view

    def unsqueeze(self, dim: int) -> Tensor:
        d = dim % (self.ndim + 1)
        stride = self.strides[d] * self.shape[d] if d < self.ndim else 1
        return Tensor(self.buffer, self.dtype, self.shape[:d] + (1,) + self.shape[d:],
                      self.strides[:d] + (stride,) + self.strides[d:], self.offset)

    def expand(self, *shape: int) -> Tensor:
        """Broadcast size-1 dims to `shape` with stride 0 (no copy)."""
        if len(shape) != self.ndim:
            raise ValueError(f"expand to {shape}: rank must stay {self.ndim}")
        strides = []
        for size, new, st in zip(self.shape, shape, self.strides):
            if size == new:
                strides.append(st)
            elif size == 1:
                strides.append(0)
            else:
                raise ValueError(f"cannot expand {list(self.shape)} to {list(shape)}")
        return Tensor(self.buffer, self.dtype, shape, strides, self.offset)


def _contiguous(array: np.ndarray, dtype: DType) -> np.ndarray:
    """`array` as a C-contiguous host array of `dtype`, 0-d kept 0-d (np.ascontiguousarray
    would make it 1-d: a scalar output such as random_sample's index is shape ())."""
    return np.asarray(array, dtype=dtype.numpy, order="C")
