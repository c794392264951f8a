"""Upstream InfiniCore's KV-cache ops (absent from 0.1.0; NVIDIA and a few other
backends, no CPU): the contiguous cache append (`kv_caching`), the block-table (paged)
cache append (`paged_caching`) and attention over a paged cache for decode
(`paged_attention`) and prefill (`paged_attention_prefill`)."""

from __future__ import annotations

import ctypes

from ..tensor import Tensor
from ._base import CachedOp

_kv_caching = CachedOp("KVCaching")
_paged_caching = CachedOp("PagedCaching")
_paged_attention = CachedOp("PagedAttention")
_paged_attention_prefill = CachedOp("PagedAttentionPrefill")


def kv_caching(k_cache: Tensor, v_cache: Tensor, k: Tensor, v: Tensor,
               past_kv_lengths: Tensor) -> None:
    _kv_caching([k_cache, v_cache, k, v, past_kv_lengths])


def paged_caching(k_cache: Tensor, v_cache: Tensor, k: Tensor, v: Tensor,
                  slot_mapping: Tensor) -> None:
    _paged_caching([k_cache, v_cache, k, v, slot_mapping])


def paged_attention(out: Tensor, q: Tensor, k_cache: Tensor, v_cache: Tensor,
                    block_tables: Tensor, seq_lens: Tensor, scale: float,
                    alibi_slopes: Tensor | None = None) -> Tensor:
    _paged_attention([out, q, k_cache, v_cache, block_tables, seq_lens, alibi_slopes],
                     create_params=(ctypes.c_float(scale),))
    return out


def paged_attention_prefill(out: Tensor, q: Tensor, k_cache: Tensor, v_cache: Tensor,
                            block_tables: Tensor, seq_lens: Tensor, cum_seq_lens_q: Tensor,
                            scale: float, alibi_slopes: Tensor | None = None) -> Tensor:
    _paged_attention_prefill([out, q, k_cache, v_cache, block_tables, seq_lens,
                              cum_seq_lens_q, alibi_slopes],
                             create_params=(ctypes.c_float(scale),))
    return out
