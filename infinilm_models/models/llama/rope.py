"""Rotary embedding tables: sin/cos of position x inverse frequency, on the device.

The frequencies (with default/linear/llama3 scaling) come from the config. InfiniCore's
rope op indexes the tables with per-token position ids (any order, any batch layout), so
they must hold a row for every position a forward uses, but no more: they are built for
the positions a KV cache of the model can hold (``max_cache_len``) and grow on demand when
a forward is given explicit position ids beyond them, up to ``max_position_embeddings``.
Building every ``max_position_embeddings`` row up front cost 2.2 GB and 10 s for a config
with 2^24 positions, and could not be done at all for 2^31 - 1 (transformers computes the
angles per forward and loads such a config).

Growing replaces ``sin``/``cos`` by new, larger tensors: read them at call time (the
attention does), never keep a reference across forwards.
"""

from __future__ import annotations

import numpy as np

from ...runtime import Device, DType, Tensor
from .configuration import LlamaConfig


class LlamaRotaryEmbedding:
    def __init__(self, config: LlamaConfig, device: Device, dtype: DType,
                 initial_positions: int) -> None:
        """``initial_positions``: rows to build now (the model passes its max_cache_len);
        required, so that no caller builds max_position_embeddings rows by default."""
        self.device = device
        self.dtype = dtype
        self.inv_freq = config.rope_inv_freq()  # float64 [head_dim / 2]
        self.scale = config.rope_attention_scaling
        # The positions the model accepts at all; the tables hold `rows` <= this of them.
        self.max_positions = config.max_position_embeddings
        self.rows = 0
        self.sin: Tensor
        self.cos: Tensor
        self._build(max(1, min(initial_positions, self.max_positions)))

    def ensure(self, positions: int) -> None:
        """Make the tables hold positions [0, positions); grows at least 2x so that a run
        of growing position ids reallocates O(log n) times."""
        if positions <= self.rows:
            return
        if positions > self.max_positions:
            raise ValueError(f"position {positions - 1} is beyond max_position_embeddings "
                             f"({self.max_positions})")
        self._build(min(self.max_positions, max(positions, 2 * self.rows)))

    def _build(self, rows: int) -> None:
        positions = np.arange(rows, dtype=np.float64)
        # transformers builds the angles in float32 and casts cos/sin to the activation
        # dtype; doing the same keeps the half-precision tables bit-comparable.
        angles = np.outer(positions.astype(np.float32), self.inv_freq.astype(np.float32))
        self.sin = Tensor.from_numpy((np.sin(angles) * self.scale).astype(np.float32),
                                     self.device, self.dtype)
        self.cos = Tensor.from_numpy((np.cos(angles) * self.scale).astype(np.float32),
                                     self.device, self.dtype)
        self.rows = rows
