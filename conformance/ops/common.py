"""Shared pieces of the op-level checks: inputs, device copies, the unsupported guard.

Inputs are drawn on the host, rounded to the tested dtype, and the very same rounded
values feed both InfiniCore and the float64 torch reference, so the reference error
budget covers only the op's own arithmetic and output rounding. The float64 references
themselves live in `references/`.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Sequence

import numpy as np

from infinilm_models.runtime import DType, InfiniError, Tensor


def rng_for(*key) -> np.random.Generator:
    """A generator seeded from the case's identity, stable across processes and runs."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


# The support probe (--support) computes nothing, so the inputs need their shapes only:
# zeros cost nothing to draw (a vocabulary-sized table takes seconds of random numbers).
SHAPES_ONLY = False


def host(shape: Sequence[int], dtype: str, rng: np.random.Generator,
         scale: float = 1.0) -> np.ndarray:
    """Random normal values already rounded to `dtype` (as a float64 array)."""
    if SHAPES_ONLY:
        return np.zeros(tuple(shape))
    a = (rng.standard_normal(tuple(shape)) * scale).astype(np.float32)
    return a.astype(DType.parse(dtype).numpy).astype(np.float64)


def to_device(a: np.ndarray, device, dtype: str) -> Tensor:
    return Tensor.from_numpy(a, device, dtype)


def padded_view(a: np.ndarray, device, dtype: str, pad: int = 5) -> Tensor:
    """`a` inside a buffer whose last dim is `pad` wider: a non-contiguous row-strided view
    (the layout of a q/k/v slice of a fused projection, or of a narrowed cache)."""
    big = np.zeros(a.shape[:-1] + (a.shape[-1] + pad,))
    big[..., : a.shape[-1]] = a
    return Tensor.from_numpy(big, device, dtype).narrow(-1, 0, a.shape[-1])


@contextlib.contextmanager
def unsupported_guard(verify):
    """An InfiniCore 'not supported' status becomes an explicit unsupported result;
    any other failure propagates and fails the check."""
    try:
        yield
    except InfiniError as e:
        if e.unsupported:
            verify.unsupported(e)
        raise


# BAD_PARAM, BAD_TENSOR_SHAPE: what a build answers for a rank or layout it does not know
# (InfiniCore 0.1.0's rope takes 3-D x/y with 1-D positions only: rope.h:89).
LAYOUT_REFUSALS = frozenset({3, 11})


@contextlib.contextmanager
def layout_guard(verify, layout: str, probe):
    """`unsupported_guard`, and for a layout some builds do not know (4-D RoPE, 1-D or 4-D
    SwiGLU): a BAD_TENSOR_SHAPE or BAD_PARAM refusal becomes `unsupported`, naming the
    status, only when `probe()` (the smallest contiguous instance of the same layout) is
    refused with such a status as well, i.e. the build does not know the layout at all.
    A build that takes the probe but refuses the case refuses a valid call: that fails."""
    try:
        yield
    except InfiniError as e:
        if e.unsupported:
            verify.unsupported(e)
        if e.status not in LAYOUT_REFUSALS:
            raise
        try:
            probe()
        except InfiniError as p:
            if p.status not in LAYOUT_REFUSALS:
                raise e from p
            verify.unsupported(RuntimeError(
                f"{layout}: this build refuses the layout ({e}); its smallest contiguous "
                f"instance is refused too ({p.status_name} ({p.status}))"))
        raise
