"""rearrange (strided copy): head transposes, appending k/v into a cache slot, making a
narrowed view contiguous, and a stride-0 repeat of KV heads (repeat_kv). Exact."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models.runtime import Tensor, ops

from .common import host, rng_for, to_device, unsupported_guard
from .shapes import CACHE_LEN, GROUP, HEAD_DIM, HEADS, KV_HEADS, PREFILL
from .sweep import describe


def _case(name: str, dtype: str, device):
    """-> (dst tensor, src tensor, function giving the expected full dst buffer, buffer)."""
    rng = rng_for("rearrange", name, dtype)
    if name == "tokens_to_heads":  # [seq, heads, d] -> [heads, seq, d]
        x = host((PREFILL, HEADS, HEAD_DIM), dtype, rng)
        dst = Tensor.empty((HEADS, PREFILL, HEAD_DIM), dtype, device)
        return dst, to_device(x, device, dtype).permute(1, 0, 2), x.transpose(1, 0, 2), None
    if name == "append_to_cache":  # k [kv, 5, d] into cache[:, 20:25]
        cache = host((KV_HEADS, CACHE_LEN, HEAD_DIM), dtype, rng)
        k = host((KV_HEADS, 5, HEAD_DIM), dtype, rng)
        cache_t = to_device(cache, device, dtype)
        expected = cache.copy()
        expected[:, 20:25] = k
        return cache_t.narrow(1, 20, 5), to_device(k, device, dtype), expected, cache_t
    if name == "batched_tokens_to_cache":  # prefill of 8 sequences: k [8, 32, kv, d] into
        # cache[:, :, 0:32] of an [8, kv, 64, d] cache (the model's K/V append at batch 8)
        b, s, max_len = 8, 32, 64
        cache = host((b, KV_HEADS, max_len, HEAD_DIM), dtype, rng)
        k = host((b * s, KV_HEADS * HEAD_DIM), dtype, rng)
        cache_t = to_device(cache, device, dtype)
        expected = cache.copy()
        expected[:, :, :s] = k.reshape(b, s, KV_HEADS, HEAD_DIM).transpose(0, 2, 1, 3)
        src = to_device(k, device, dtype).view(b, s, KV_HEADS, HEAD_DIM).permute(0, 2, 1, 3)
        return cache_t.narrow(2, 0, s), src, expected, cache_t
    if name == "narrow_to_contiguous":
        x = host((PREFILL, 100), dtype, rng)
        src = to_device(x, device, dtype).narrow(1, 10, 64)
        return Tensor.empty((PREFILL, 64), dtype, device), src, x[:, 10:74], None
    if name == "repeat_kv_stride0":  # [kv, seq, d] -> [kv, group, seq, d] with stride 0
        k = host((KV_HEADS, PREFILL, HEAD_DIM), dtype, rng)
        kt = to_device(k, device, dtype)
        src = kt.as_strided((KV_HEADS, GROUP, PREFILL, HEAD_DIM),
                            (PREFILL * HEAD_DIM, 0, HEAD_DIM, 1))
        expected = np.repeat(k[:, None], GROUP, axis=1)
        return Tensor.empty(src.shape, dtype, device), src, expected, None
    if name == "heads_5d_small_head_dim":  # the model's GQA query regrouping, head_dim 8
        q = host((2, 13, 2 * 4 * 8), dtype, rng)
        src = to_device(q, device, dtype).view(2, 13, 2, 4, 8).permute(0, 2, 3, 1, 4)
        expected = q.reshape(2, 13, 2, 4, 8).transpose(0, 2, 3, 1, 4)
        return Tensor.empty(src.shape, dtype, device), src, expected, None
    if name == "heads_5d_back_to_tokens":  # attention output regrouped back to tokens
        a = host((2, 2, 4, 13, 8), dtype, rng)  # [b, kv_heads, group, seq, head_dim]
        src = to_device(a, device, dtype).permute(0, 3, 1, 2, 4)
        return Tensor.empty(src.shape, dtype, device), src, a.transpose(0, 3, 1, 2, 4), None
    if name == "decode_append":  # one new token of 2 sequences into cache[:, :, 20]
        cache = host((2, KV_HEADS, CACHE_LEN, HEAD_DIM), dtype, rng)
        k = host((2, KV_HEADS * HEAD_DIM), dtype, rng)
        cache_t = to_device(cache, device, dtype)
        expected = cache.copy()
        expected[:, :, 20] = k.reshape(2, KV_HEADS, HEAD_DIM)
        src = to_device(k, device, dtype).view(2, 1, KV_HEADS, HEAD_DIM).permute(0, 2, 1, 3)
        return cache_t.narrow(2, 20, 1), src, expected, cache_t
    if name == "odd_transpose_2d":
        x = host((13, 37), dtype, rng)
        return Tensor.empty((37, 13), dtype, device), to_device(x, device, dtype).transpose(0, 1), \
            x.T, None
    raise KeyError(name)


CASES = ["tokens_to_heads", "append_to_cache", "decode_append", "batched_tokens_to_cache",
         "narrow_to_contiguous",
         "repeat_kv_stride0", "heads_5d_small_head_dim", "heads_5d_back_to_tokens",
         "odd_transpose_2d"]


@pytest.mark.parametrize("case", CASES)
def test_op_rearrange(case, dtype, infini_device, verify):
    dst, src, expected, whole = _case(case, dtype, infini_device)
    verify.param(dst=dst.describe(), src=src.describe())
    with unsupported_guard(verify):
        ops.rearrange(dst, src)
    # A copy must be exact; for a cache append the whole cache is compared, so writes
    # outside the slot are caught too.
    verify.exact((whole if whole is not None else dst).numpy().astype(np.float64), expected,
                 standard="copy")


def test_op_rearrange_sweep(sweep_case, dtype, infini_device, verify):
    """A permuted (and optionally narrowed) source copied into a contiguous destination."""
    p = sweep_case.params
    verify.param(**describe(sweep_case))
    shape, perm, pad = p["shape"], p["perm"], p["pad"]
    x = host(shape[:-1] + [shape[-1] + pad], dtype,
             rng_for("rearrange-sweep", sweep_case.seed, sweep_case.name, dtype))
    src = to_device(x, infini_device, dtype).narrow(-1, 0, shape[-1]).permute(*perm)
    dst = Tensor.empty(src.shape, dtype, infini_device)
    with unsupported_guard(verify):
        ops.rearrange(dst, src)
    verify.exact(dst.numpy().astype(np.float64), x[..., : shape[-1]].transpose(perm),
                 standard="copy")
