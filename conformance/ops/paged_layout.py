"""The block-table (paged) KV cache layout of upstream InfiniCore's paged ops, on the host.

A cache pool is `[num_blocks, kv_heads, block_size, head_dim]`. Token `t` of sequence `s`
lives in block `block_tables[s, t // block_size]`, at row `t % block_size`; its slot (the
unit of paged_caching's `slot_mapping`) is `block * block_size + row`.

The layouts here are never the easy ones: blocks are handed out in a shuffled order (an
identity table cannot pass by accident), each table has one column more than its longest
sequence needs (the row stride of the table is not the number of used blocks), the padding
of short tables points at a spare block that belongs to no sequence, and the last block of
a sequence is normally only partly filled. Rows no sequence owns hold stale values that a
kernel must never read (`stale_scale` makes a stale key dominate any softmax that reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from infinilm_models.runtime import Tensor, ops

from .common import host

STALE_SCALE = 3.0  # stale keys this much larger than live ones: reading one shows


@dataclass(frozen=True)
class Layout:
    block_size: int
    num_blocks: int
    lens: tuple[int, ...]  # tokens each sequence holds once the op has run
    block_tables: np.ndarray  # int64 [num_seqs, max_blocks_per_seq]
    spare: int  # a block of no sequence; the tables' padding points here

    @property
    def num_seqs(self) -> int:
        return len(self.lens)

    def blocks_of(self, s: int) -> np.ndarray:
        """The physical blocks sequence `s` uses, in logical order."""
        return self.block_tables[s, : -(-self.lens[s] // self.block_size)]

    def slot(self, s: int, t: int) -> int:
        return int(self.block_tables[s, t // self.block_size]) * self.block_size \
            + t % self.block_size

    def slots(self, s: int, positions) -> np.ndarray:
        return np.array([self.slot(s, int(t)) for t in positions], dtype=np.int64)

    def live(self) -> np.ndarray:
        """[num_blocks, block_size] mask of the rows some sequence holds."""
        m = np.zeros((self.num_blocks, self.block_size), dtype=bool)
        for s, n in enumerate(self.lens):
            for t in range(n):
                m[self.block_tables[s, t // self.block_size], t % self.block_size] = True
        return m


def make_layout(rng: np.random.Generator, lens, block_size: int, spare_blocks: int = 2
                ) -> Layout:
    """Blocks for sequences of `lens` tokens, handed out in a shuffled order."""
    lens = tuple(int(n) for n in lens)
    need = [-(-n // block_size) for n in lens]
    used = sum(need)
    num_blocks = used + spare_blocks
    perm = rng.permutation(num_blocks)
    if (np.diff(perm[:used]) == 1).all():  # an identity-like table by chance: reverse it
        perm = perm[::-1].copy()
    spare = int(perm[-1])
    tables = np.full((len(lens), max(need) + 1), spare, dtype=np.int64)
    at = 0
    for s, k in enumerate(need):
        tables[s, :k] = perm[at:at + k]
        at += k
    return Layout(block_size, num_blocks, lens, tables, spare)


def gather(pool: np.ndarray, table: np.ndarray, n: int) -> np.ndarray:
    """Tokens 0..n-1 of the sequence whose block-table row is `table`, dense:
    [n, kv_heads, head_dim] (a reference reads the cache through the op's own arguments)."""
    bs = pool.shape[2]
    blocks = np.asarray(table[: -(-n // bs)], dtype=np.int64)
    # [blocks, kv, bs, d] -> [blocks * bs, kv, d]: the sequence's tokens in order
    return pool[blocks].transpose(0, 2, 1, 3).reshape(-1, *pool.shape[1::2])[:n]


def pools(rng: np.random.Generator, layout: Layout, kv_heads: int, head_dim: int,
          dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """K and V pools holding every sequence's tokens (unit normal, rounded to `dtype`), with
    stale rows (STALE_SCALE x larger) everywhere no sequence owns."""
    shape = (layout.num_blocks, kv_heads, layout.block_size, head_dim)
    live = layout.live()
    out = []
    for _ in range(2):
        pool = host(shape, dtype, rng, STALE_SCALE)
        fresh = host(shape, dtype, rng)
        pool.transpose(0, 2, 1, 3)[live] = fresh.transpose(0, 2, 1, 3)[live]
        out.append(pool)
    return out[0], out[1]


def attend(q: np.ndarray, keys: np.ndarray, values: np.ndarray, q_pos: np.ndarray,
           scale: float, alibi: np.ndarray | None) -> np.ndarray:
    """Softmax attention of queries `q` [n, heads, d] at positions `q_pos` over the dense
    `keys`/`values` [L, kv_heads, d] of their sequence: query i sees keys 0..q_pos[i]
    (causal), query head h uses kv head h // (heads / kv_heads) (GQA), and ALiBi adds
    alibi[h] * (key position - query position). Float64 throughout."""
    group = q.shape[1] // keys.shape[1]
    kr, vr = np.repeat(keys, group, axis=1), np.repeat(values, group, axis=1)  # [L, H, d]
    s = np.einsum("qhd,khd->hqk", q, kr) * scale
    rel = np.arange(keys.shape[0])[None, :] - np.asarray(q_pos)[:, None]  # [n, L]
    if alibi is not None:
        s = s + alibi[:, None, None] * rel[None]
    s = np.where((rel <= 0)[None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", p, vr)


def alibi_slopes(heads: int) -> np.ndarray:
    """The ALiBi paper's geometric slopes (2^(-8/n) ... for n heads; non-powers of two
    interleave the next power's), in f32 as the ops take them."""
    def powers(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    p2 = 1 << (heads.bit_length() - 1)
    s = powers(p2)
    if p2 < heads:
        s += powers(2 * p2)[0::2][: heads - p2]
    return np.array(s, dtype=np.float32).astype(np.float64)


@dataclass
class PreparedAttention:
    """One prepared call of a paged attention op: its arguments as passed to `ops.<op>`
    (output first, alibi slopes last), the layout, and the float64 expectation."""

    args: tuple
    layout: Layout
    expected: np.ndarray
    host: dict
    op: ClassVar[str]

    @property
    def out(self) -> Tensor:
        return self.args[0]

    @property
    def alibi(self) -> Tensor | None:
        return self.args[-1]

    def call(self) -> None:
        getattr(ops, self.op)(*self.args)  # looked up per call: a planted op replaces it
