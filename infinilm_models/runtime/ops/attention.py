"""InfiniCore's fused attention with KV cache (optional: the model composes attention from
gemm + causal_softmax + gemm because this op crashes on NVIDIA in InfiniCore 0.1.0).

q [n_q_heads, seq, head_dim], k/v [n_kv_heads, seq, head_dim],
k_cache/v_cache [n_kv_heads, >= pos + seq, head_dim]; out [seq, n_q_heads, head_dim].
The new k/v are written into the caches at `pos`.
"""

from __future__ import annotations

import ctypes

from ..tensor import Tensor
from ._base import CachedOp

_op = CachedOp("Attention")


def attention(out: Tensor, q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor,
              pos: int) -> Tensor:
    _op([out, q, k, v, k_cache, v_cache], create_params=(ctypes.c_size_t(pos),))
    return out
