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
    """k_cache[b, :, past[b] + i] = k[b, :, i]. Caches [batch, kv_heads, max_seq, d], k/v
    [batch, kv_heads, seq, d] (f16/bf16/f32, any strides), past_kv_lengths [batch] i32/i64
    (contiguous). Upstream checks no bound: past[b] + seq <= max_seq is the caller's."""
    _kv_caching([k_cache, v_cache, k, v, past_kv_lengths])


def paged_caching(k_cache: Tensor, v_cache: Tensor, k: Tensor, v: Tensor,
                  slot_mapping: Tensor) -> None:
    """k_cache[slot // bs, :, slot % bs] = k[i] for slot = slot_mapping[i] >= 0 (negative:
    padding, skipped). Caches [num_blocks, kv_heads, bs, d] (last dim contiguous), k/v
    [tokens, kv_heads, d] (any token stride, heads packed), slot_mapping [tokens] i64."""
    _paged_caching([k_cache, v_cache, k, v, slot_mapping])


def paged_attention(out: Tensor, q: Tensor, k_cache: Tensor, v_cache: Tensor,
                    block_tables: Tensor, seq_lens: Tensor, scale: float,
                    alibi_slopes: Tensor | None = None) -> Tensor:
    """Decode: out/q [seqs, heads, d] (f16/bf16, d in 64/128/192/256/576, heads packed)
    over caches [num_blocks, kv_heads, bs, d]; block_tables [seqs, max_blocks] and
    seq_lens [seqs] contiguous, one dtype (i64/i32); alibi_slopes [heads] f32 or None."""
    _paged_attention([out, q, k_cache, v_cache, block_tables, seq_lens, alibi_slopes],
                     create_params=(ctypes.c_float(scale),))
    return out


def paged_attention_prefill(out: Tensor, q: Tensor, k_cache: Tensor, v_cache: Tensor,
                            block_tables: Tensor, seq_lens: Tensor, cum_seq_lens_q: Tensor,
                            scale: float, alibi_slopes: Tensor | None = None) -> Tensor:
    """Causal prefill of packed queries out/q [total_q, heads, d] over caches that already
    hold them: seq_lens [seqs] are total KV lengths, cum_seq_lens_q [seqs + 1] the query
    prefix sum; block_tables, seq_lens and cum_seq_lens_q share one dtype (i64/i32)."""
    _paged_attention_prefill([out, q, k_cache, v_cache, block_tables, seq_lens,
                              cum_seq_lens_q, alibi_slopes],
                             create_params=(ctypes.c_float(scale),))
    return out
