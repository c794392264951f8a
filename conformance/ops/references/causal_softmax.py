"""causal_softmax in float64: the bottom-right causal mask (query row i of q sees keys
0..k - q + i, so a chunk after a cache and a decode row see the whole history)."""

from __future__ import annotations

import numpy as np


def reference_mask(shape) -> np.ndarray:
    """True at the masked (future) positions of scores of this shape."""
    q, k = shape[-2:]
    visible = np.arange(k)[None, :] <= (k - q + np.arange(q))[:, None]
    return np.broadcast_to(~visible, tuple(shape))


def reference(x: np.ndarray) -> np.ndarray:
    q, k = x.shape[-2:]
    mask = np.arange(k)[None, :] <= (k - q + np.arange(q))[:, None]
    z = np.where(mask, x, -np.inf)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
