"""The KV cache: K and V of every layer preallocated on the device up to a maximum length,
plus what the attention needs to mask and position padded rows.

Layout [layers, batch, kv_heads, max_len + 1, head_dim], one allocation for K and one for
V: (batch, kv_head) is one uniform stride, so attention runs as a single batched gemm
over batch x kv_heads; the first `length` positions of every head are a zero-copy view;
and one copy over the layer axis moves a position of every layer at once. Position
`max_len` is the decode slot of a captured decode step (its pointers never move; the
step writes the new token's K/V there and it is copied to its place afterwards).

Padding (left-padded prompts of unequal length) is kept per row: which positions hold
padding (never attended to), and each row's next RoPE position.
"""

from __future__ import annotations

import numpy as np

from ...runtime import Device, DType, Tensor
from .configuration import LlamaConfig


class CacheOverflowError(ValueError):
    pass


def mask_value(dtype: DType) -> float:
    """Added to the scores of positions that must not be attended to. Finite (half the
    dtype's range): a row of padding sees only padding, and -inf there would make its
    softmax NaN; a score plus this is still finite and its exp is 0 next to any real key."""
    return -0.5 * float(np.finfo(dtype.numpy if dtype != DType.BF16 else np.float32).max) \
        if dtype != DType.F16 else -32768.0


class KVCache:
    def __init__(self, config: LlamaConfig, batch_size: int, max_len: int, device: Device,
                 dtype: DType) -> None:
        if batch_size < 1 or max_len < 1:
            raise ValueError(f"KVCache needs batch_size >= 1 and max_len >= 1, "
                             f"got {batch_size} and {max_len}")
        self.batch_size = batch_size
        self.max_len = max_len
        self.num_layers = config.num_hidden_layers
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.device, self.dtype = device, dtype
        shape = (self.num_layers, batch_size, self.num_kv_heads, max_len + 1, self.head_dim)
        self.k_all = Tensor.zeros(shape, dtype, device)
        self.v_all = Tensor.zeros(shape, dtype, device)
        self.keys = [self.k_all.select(0, i).narrow(2, 0, max_len)
                     for i in range(self.num_layers)]
        self.values = [self.v_all.select(0, i).narrow(2, 0, max_len)
                       for i in range(self.num_layers)]
        self.length = 0
        self.positions = np.zeros(batch_size, dtype=np.int64)  # next RoPE position per row
        self.padding = np.zeros((batch_size, max_len + 1), dtype=bool)
        self.masked = False  # any padding: attention adds `mask` to its scores
        self._mask: Tensor | None = None
        self._padding_version = 0  # bumped whenever `padding` changes other than by decode
        # fixed_mask's per (group, in place, window): [device buffer, host copy, the
        # (padding version, length) it was built for]
        self._fixed: dict[tuple, list] = {}

    def reset(self) -> None:
        self.length = 0
        self.positions[:] = 0
        self.padding[:] = False
        self.masked = False
        self._padding_version += 1

    def copy_from(self, other: KVCache) -> None:
        """Make this cache a copy of `other` (same batch, length limit, layout): its K/V on
        the device and its positions and padding; two decoders can then go on from one
        prefill."""
        from ...runtime import ops

        if (other.batch_size, other.max_len, other.num_layers) != \
                (self.batch_size, self.max_len, self.num_layers):
            raise ValueError(f"copy_from: a cache of {other.batch_size} rows x {other.max_len} "
                             f"into one of {self.batch_size} x {self.max_len}")
        ops.copy(self.k_all, other.k_all)
        ops.copy(self.v_all, other.v_all)
        self.length = other.length
        self.positions = other.positions.copy()
        self.padding = other.padding.copy()
        self.masked = other.masked
        self._padding_version += 1
        if self.masked:
            self._upload_mask()

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on (e.g. to re-run a step); the data stays."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length
        self.padding[:, length:] = False
        self._padding_version += 1
        self.positions = (~self.padding[:, :length]).sum(axis=1)
        self.masked = bool(self.padding.any())
        if self.masked:
            self._upload_mask()

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

    def next_positions(self, seq: int, attention_mask: np.ndarray | None) -> np.ndarray:
        """The RoPE positions [batch, seq] that `admit` would give `seq` new tokens, without
        recording anything (a call can be refused after this and leave the cache as it
        was): each row counts its real tokens only, as transformers' generate does for
        left-padded batches (padding gets position 1, which nothing attends to)."""
        if attention_mask is None or attention_mask.all():
            return self.positions[:, None] + np.arange(seq)[None, :]
        real = attention_mask.astype(bool)
        return np.where(real, self.positions[:, None] + np.cumsum(real, axis=1) - 1, 1)

    def admit(self, start: int, seq: int, attention_mask: np.ndarray | None) -> np.ndarray:
        """Record which of the `seq` new tokens at `start` are padding (attention_mask 0)
        and return their RoPE positions (`next_positions`)."""
        pos = self.next_positions(seq, attention_mask)
        if attention_mask is None or attention_mask.all():
            self.positions += seq
            return pos
        real = attention_mask.astype(bool)
        self.positions += real.sum(axis=1)
        self.padding[:, start:start + seq] = ~real
        self.masked = True
        self._padding_version += 1
        self._upload_mask()
        return pos

    @property
    def mask(self) -> Tensor:
        """[batch, max_len + 1] additive mask: 0 where a key may be attended to."""
        if self._mask is None:
            self._upload_mask()
        return self._mask

    def _upload_mask(self) -> None:
        host = np.where(self.padding, mask_value(self.dtype), 0.0)
        if self._mask is None:
            self._mask = Tensor.from_numpy(host, self.device, self.dtype)
        else:
            self._mask.copy_from_numpy(host)

    def slot(self, layer: int, start: int, seq: int) -> tuple[Tensor, Tensor]:
        """Where the K/V of `seq` new tokens go: [batch, kv_heads, seq, head_dim] views."""
        return (self.keys[layer].narrow(2, start, seq), self.values[layer].narrow(2, start, seq))

    def prefix(self, layer: int, total: int) -> tuple[Tensor, Tensor]:
        """The first `total` positions as [batch * kv_heads, total, head_dim] views."""
        return self.span(layer, 0, total)

    def span(self, layer: int, first: int, count: int) -> tuple[Tensor, Tensor]:
        """Positions [first, first + count) as [batch * kv_heads, count, head_dim] views."""
        k, v = self.keys[layer], self.values[layer]
        shape = (self.batch_size * self.num_kv_heads, count, self.head_dim)
        strides = (k.strides[1], k.strides[2], 1)
        offset = first * k.strides[2]
        return (k.as_strided(shape, strides, offset=k.offset + offset),
                v.as_strided(shape, strides, offset=v.offset + offset))

    def rows(self, first: int, count: int) -> KVCache:
        """Rows [first, first + count) of this cache as a cache of their own, sharing its
        memory and its per-row state (a micro-batch of a pipeline stage)."""
        if not (0 <= first and count >= 1 and first + count <= self.batch_size):
            raise ValueError(f"rows({first}, {count}) of a cache of {self.batch_size} rows")
        view = object.__new__(KVCache)
        view.__dict__.update(self.__dict__)
        view.batch_size = count
        view.k_all = self.k_all.narrow(1, first, count)
        view.v_all = self.v_all.narrow(1, first, count)
        view.keys = [k.narrow(0, first, count) for k in self.keys]
        view.values = [v.narrow(0, first, count) for v in self.values]
        view.positions = self.positions[first:first + count]  # numpy views: shared state
        view.padding = self.padding[first:first + count]
        view._mask = self.mask.narrow(0, first, count) if self.masked else None
        view._fixed = {}
        return view

    # -- the fixed-shape decode step (captured graphs) ----------------------------------

    def decode_slot(self, layer: int, position: int | None = None) -> tuple[Tensor, Tensor]:
        """Where a fixed-shape decode step writes the new token's K/V: position `position`
        (default max_len, past every cached one), the same pointers at every step of one
        span."""
        at = self.max_len if position is None else position
        return (self.k_all.select(0, layer).narrow(2, at, 1),
                self.v_all.select(0, layer).narrow(2, at, 1))

    def full(self, layer: int, n: int | None = None) -> tuple[Tensor, Tensor]:
        """The first `n` positions (default all max_len + 1, the slot included) as
        [batch * kv_heads, n, head_dim]."""
        k, v = self.k_all.select(0, layer), self.v_all.select(0, layer)
        n = self.max_len + 1 if n is None else n
        shape = (self.batch_size * self.num_kv_heads, n, self.head_dim)
        strides = (k.strides[1], k.strides[2], 1)
        return k.as_strided(shape, strides), v.as_strided(shape, strides)

    def fixed_mask(self, group: int, in_place: bool = False, window: int | None = None,
                   n: int | None = None) -> Tensor:
        """The additive mask of a fixed-shape decode step over the first `n` positions
        (default all max_len + 1), expanded to the scores' layout [batch * kv_heads,
        group, n]: 0 at the cached positions (padding excepted) and at the new token's,
        mask_value elsewhere. The new token sits in the slot, the last of the n positions
        (position max_len by default), or, `in_place` (kv_caching), at the cache's length.
        `window`: a sliding window's layers see only the positions after length - window.
        Uploaded at every step into the same buffer (one per group, in_place, window, n);
        from one decode step to the next only the position the last step committed (and
        the one leaving the window) changes, so the host copy is built once and updated
        there."""
        b, nkv = self.batch_size, self.num_kv_heads
        n = self.max_len + 1 if n is None else n
        cached = n if in_place else n - 1  # positions held (the last one the slot)
        entry = self._fixed.setdefault((group, in_place, window, n), [None, None, None])
        t, host, last = entry
        state = (self._padding_version, self.length)
        if host is not None and last[0] == state[0] and self.length == last[1] + 1:
            if window is None or last[1] > self.length - window:
                host[:, :, last[1]] = 0  # the token the last step committed (never padding)
            if in_place and self.length < cached:
                host[:, :, self.length] = 0  # where this step's token goes
            if window is not None and self.length - window >= 0:
                host[:, :, self.length - window] = mask_value(self.dtype)  # out of the window
        elif host is None or last != state:
            row = self.padding[:, :n].copy()
            row[:, self.length:cached] = True
            if not in_place:
                row[:, n - 1] = False  # the slot
            elif self.length < cached:
                row[:, self.length] = False
            if window is not None:
                row[:, :max(0, self.length - window + 1)] = True
            full = np.where(row, mask_value(self.dtype), 0.0)[:, None, None, :]
            host = np.broadcast_to(full, (b, nkv, group, n)).reshape(b * nkv, group, n)
            host = host.astype(self.dtype.numpy)
        entry[1], entry[2] = host, state
        if t is None:
            t = entry[0] = Tensor.from_numpy(host, self.device, self.dtype)
        else:
            t.copy_from_numpy(host)
        return t

    def commit_slot(self, position: int, slot: int | None = None) -> None:
        """After a fixed-shape step: the slot's K/V (position `slot`, default max_len) of
        every layer to `position` (two copies over the layer axis of the one allocation)."""
        from ...runtime import ops

        slot = self.max_len if slot is None else slot
        if slot == position:
            return
        for t in (self.k_all, self.v_all):
            ops.copy(t.narrow(3, position, 1), t.narrow(3, slot, 1))
