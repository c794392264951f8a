"""The KV cache: per layer, K and V preallocated on the device up to a maximum length.

Layout [batch, kv_heads, max_len, head_dim] makes (batch, kv_head) one uniform stride,
so attention runs as a single batched gemm over batch x kv_heads, and the first `length`
positions of every head are a zero-copy narrow.
"""

from __future__ import annotations

from ...runtime import Device, DType, Tensor
from .configuration import LlamaConfig


class CacheOverflowError(ValueError):
    pass


class KVCache:
    def __init__(self, config: LlamaConfig, batch_size: int, max_len: int, device: Device,
                 dtype: DType) -> None:
        if batch_size < 1 or max_len < 1:
            raise ValueError(f"KVCache needs batch_size >= 1 and max_len >= 1, "
                             f"got {batch_size} and {max_len}")
        self.batch_size = batch_size
        self.max_len = max_len
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        shape = (batch_size, self.num_kv_heads, max_len, self.head_dim)
        self.keys = [Tensor.zeros(shape, dtype, device) for _ in range(config.num_hidden_layers)]
        self.values = [Tensor.zeros(shape, dtype, device) for _ in range(config.num_hidden_layers)]
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on (e.g. to re-run a step); the data stays."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length

    def reserve(self, batch_size: int, new_tokens: int) -> int:
        """Check that `new_tokens` more fit; return the position they start at."""
        if batch_size != self.batch_size:
            raise ValueError(f"batch size {batch_size} does not match the cache's "
                             f"{self.batch_size}; allocate a new cache or reset this one")
        if self.length + new_tokens > self.max_len:
            raise CacheOverflowError(
                f"KV cache full: {self.length} cached + {new_tokens} new tokens > max_len "
                f"{self.max_len}; create the model/cache with a larger max_cache_len")
        return self.length

    def slot(self, layer: int, start: int, seq: int) -> tuple[Tensor, Tensor]:
        """Where the K/V of `seq` new tokens go: [batch, kv_heads, seq, head_dim] views."""
        return (self.keys[layer].narrow(2, start, seq), self.values[layer].narrow(2, start, seq))

    def prefix(self, layer: int, total: int) -> tuple[Tensor, Tensor]:
        """The first `total` positions as [batch * kv_heads, total, head_dim] views."""
        k, v = self.keys[layer], self.values[layer]
        shape = (self.batch_size * self.num_kv_heads, total, self.head_dim)
        strides = (self.max_len * self.head_dim, self.head_dim, 1)
        return (k.as_strided(shape, strides), v.as_strided(shape, strides))
