"""Rotary embedding tables: sin/cos of position x inverse frequency, on the device.

The frequencies (with default/linear/llama3 scaling) come from the config; the table holds
every position up to max_position_embeddings so that InfiniCore's rope op can index it
with per-token position ids (any order, any batch layout).
"""

from __future__ import annotations

import numpy as np

from ...runtime import Device, DType, Tensor
from .configuration import LlamaConfig


class LlamaRotaryEmbedding:
    def __init__(self, config: LlamaConfig, device: Device, dtype: DType) -> None:
        inv_freq = config.rope_inv_freq()  # float64 [head_dim / 2]
        positions = np.arange(config.max_position_embeddings, dtype=np.float64)
        # transformers builds the angles in float32 and casts cos/sin to the activation
        # dtype; doing the same keeps the half-precision tables bit-comparable.
        angles = np.outer(positions.astype(np.float32), inv_freq.astype(np.float32))
        scale = config.rope_attention_scaling
        self.sin = Tensor.from_numpy((np.sin(angles) * scale).astype(np.float32), device, dtype)
        self.cos = Tensor.from_numpy((np.cos(angles) * scale).astype(np.float32), device, dtype)
        self.max_positions = config.max_position_embeddings
