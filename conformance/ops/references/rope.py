"""RoPE in float64, GPT-NeoX (HF LLaMA's rotate_half) and GPT-J, over sin/cos tables
rounded to the tested dtype as the op receives them."""

from __future__ import annotations

import numpy as np

from infinilm_models.runtime import DType

MAX_POS = 1024
THETA = 1e5


def tables(head_dim: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    inv = 1.0 / (THETA ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    ang = np.outer(np.arange(MAX_POS, dtype=np.float64), inv)
    npd = DType.parse(dtype).numpy
    return (np.sin(ang).astype(np.float32).astype(npd).astype(np.float64),
            np.cos(ang).astype(np.float32).astype(npd).astype(np.float64))


def reference(x: np.ndarray, pos: np.ndarray, sin: np.ndarray, cos: np.ndarray,
              algo: str) -> np.ndarray:
    s, c = sin[pos][:, None, :], cos[pos][:, None, :]
    if algo == "gpt_neox":
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = x1 * c - x2 * s, x1 * s + x2 * c
    return out
