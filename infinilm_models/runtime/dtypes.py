"""Element types: InfiniCore's infiniDtype_t, their names and numpy counterparts."""

from __future__ import annotations

import enum

import ml_dtypes
import numpy as np


class DType(enum.IntEnum):
    """The subset of infiniDtype_t this project moves between host and device."""

    BOOL = 2
    I8 = 3
    I16 = 4
    I32 = 5
    I64 = 6
    U8 = 7
    F16 = 12
    F32 = 13
    F64 = 14
    BF16 = 19

    @property
    def numpy(self) -> np.dtype:
        return _TO_NUMPY[self]

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self]

    @property
    def short(self) -> str:
        return self.name.lower()

    def __str__(self) -> str:  # "f32", not IntEnum's "13" (model.dtype in messages)
        return self.short

    @property
    def is_float(self) -> bool:
        return self in (DType.F16, DType.F32, DType.F64, DType.BF16)

    @classmethod
    def parse(cls, value: str | DType | np.dtype | type) -> DType:
        """Accept 'f32', 'float32', 'bf16', 'bfloat16', numpy dtypes and DType itself."""
        if isinstance(value, DType):
            return value
        if isinstance(value, str):
            key = value.strip().lower()
            if key in _ALIASES:
                return _ALIASES[key]
            raise ValueError(
                f"unknown dtype {value!r}; expected one of {sorted(_ALIASES)}"
            )
        npd = np.dtype(value)
        for dt, n in _TO_NUMPY.items():
            if n == npd:
                return dt
        raise ValueError(f"numpy dtype {npd} has no InfiniCore counterpart")


_TO_NUMPY = {
    DType.BOOL: np.dtype(np.bool_),
    DType.I8: np.dtype(np.int8),
    DType.I16: np.dtype(np.int16),
    DType.I32: np.dtype(np.int32),
    DType.I64: np.dtype(np.int64),
    DType.U8: np.dtype(np.uint8),
    DType.F16: np.dtype(np.float16),
    DType.F32: np.dtype(np.float32),
    DType.F64: np.dtype(np.float64),
    DType.BF16: np.dtype(ml_dtypes.bfloat16),
}

_ALIASES = {
    "f16": DType.F16, "fp16": DType.F16, "float16": DType.F16, "half": DType.F16,
    "f32": DType.F32, "fp32": DType.F32, "float32": DType.F32, "float": DType.F32,
    "f64": DType.F64, "float64": DType.F64,
    "bf16": DType.BF16, "bfloat16": DType.BF16,
    "i32": DType.I32, "int32": DType.I32, "i64": DType.I64, "int64": DType.I64,
    "i8": DType.I8, "int8": DType.I8, "u8": DType.U8, "uint8": DType.U8,
    "i16": DType.I16, "int16": DType.I16, "bool": DType.BOOL,
}

# Read on every view and op call: a dict lookup, not a numpy dtype attribute.
_ITEMSIZE = {dt: np.dtype(n).itemsize for dt, n in _TO_NUMPY.items()}
