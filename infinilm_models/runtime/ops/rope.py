"""Rotary position embedding on [tokens, heads, head_dim] with per-token positions.

`sin_table`/`cos_table` are [max_positions, head_dim/2], indexed by `pos_ids` [tokens].
Upstream InfiniCore after 0.1.0 also takes x/y of [batch, seq, heads, head_dim] with
`pos_ids` [batch, seq] (one run of positions per batch row) or [seq] (shared by every row);
0.1.0 refuses that layout with BAD_TENSOR_SHAPE. Neither build reads `pos_ids`' strides
(nor checks them): pass it contiguous.
GPT-NeoX rotates the two halves of head_dim (HF LLaMA's `rotate_half`); GPT-J rotates
interleaved even/odd pairs.
"""

from __future__ import annotations

import enum

from ..tensor import Tensor
from ._base import CachedOp


class RoPEAlgo(enum.IntEnum):
    GPT_J = 0
    GPT_NEOX = 1

    @classmethod
    def parse(cls, value: str | int | RoPEAlgo) -> RoPEAlgo:
        if isinstance(value, str):
            key = value.strip().lower().replace("-", "_")
            names = {"gpt_j": cls.GPT_J, "gptj": cls.GPT_J, "gpt_neox": cls.GPT_NEOX,
                     "neox": cls.GPT_NEOX}
            if key not in names:
                raise ValueError(f"unknown RoPE algorithm {value!r}; expected gpt_j or gpt_neox")
            return names[key]
        return cls(value)


_op = CachedOp("RoPE")


def rope(y: Tensor, x: Tensor, pos_ids: Tensor, sin_table: Tensor, cos_table: Tensor,
         algo: str | RoPEAlgo = RoPEAlgo.GPT_NEOX) -> Tensor:
    _op([y, x, pos_ids, sin_table, cos_table], create_params=(int(RoPEAlgo.parse(algo)),))
    return y
