"""InfiniCore's fused attention with KV cache (optional op; the model composes attention
itself). Each call runs in a child process: this op is known to crash on some backends,
and a crash must be a failed check, not a dead run."""

from __future__ import annotations

import numpy as np
import pytest

from conformance.isolation import ChildError, run_isolated
from infinilm_models.runtime import InfiniError

from .common import host, rng_for
from .shapes import CACHE_LEN, HEAD_DIM, HEADS, KV_HEADS, LONG_KEYS, PREFILL

# name: (q heads, kv heads, seq, pos)
CASES = {
    "gqa_prefill": (HEADS, KV_HEADS, PREFILL, 0),
    "gqa_decode": (HEADS, KV_HEADS, 1, 20),
    "mha_chunk": (4, 4, 5, 9),
    # decode after several hundred and a few thousand cached positions
    **{f"gqa_decode_{n}": (HEADS, KV_HEADS, 1, n - 1) for n in LONG_KEYS},
}


def run_infinicore(device: str, dtype: str, q, k, v, k_cache, v_cache, pos: int):
    """In the child: the op, then the output and the caches back to the host."""
    from infinilm_models.runtime import Tensor, ops

    qt, kt, vt = (Tensor.from_numpy(a, device, dtype) for a in (q, k, v))
    kc, vc = Tensor.from_numpy(k_cache, device, dtype), Tensor.from_numpy(v_cache, device, dtype)
    out = Tensor.empty((q.shape[1], q.shape[0], q.shape[2]), dtype, device)
    try:
        ops.attention(out, qt, kt, vt, kc, vc, pos)
    except InfiniError as e:
        return {"error": str(e), "unsupported": e.unsupported}
    return {"out": out.numpy().astype(np.float64), "k_cache": kc.numpy().astype(np.float64)}


def reference(q, k, v, k_cache, v_cache, pos):
    kc, vc = k_cache.copy(), v_cache.copy()
    seq = q.shape[1]
    kc[:, pos:pos + seq], vc[:, pos:pos + seq] = k, v
    total = pos + seq
    group = q.shape[0] // k.shape[0]
    keys = np.repeat(kc[:, :total], group, axis=0)
    vals = np.repeat(vc[:, :total], group, axis=0)
    s = q @ keys.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
    mask = np.arange(total)[None, :] <= (pos + np.arange(seq))[:, None]
    s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ vals).transpose(1, 0, 2), kc


@pytest.mark.isolated
@pytest.mark.parametrize("case", list(CASES))
def test_op_attention(case, dtype, infini_device, verify):
    nh, nkv, seq, pos = CASES[case]
    rng = rng_for("attention", case, dtype)
    q = host((nh, seq, HEAD_DIM), dtype, rng)
    k, v = host((nkv, seq, HEAD_DIM), dtype, rng), host((nkv, seq, HEAD_DIM), dtype, rng)
    cache_len = max(CACHE_LEN, pos + seq)
    k_cache = host((nkv, cache_len, HEAD_DIM), dtype, rng)
    v_cache = host((nkv, cache_len, HEAD_DIM), dtype, rng)
    expected, expected_k_cache = reference(q, k, v, k_cache, v_cache, pos)
    try:
        got = run_isolated(run_infinicore, str(infini_device), dtype, q, k, v, k_cache, v_cache,
                           pos, timeout=300)
    except ChildError as e:
        raise AssertionError(f"{e}\n{e.child_traceback}") from None
    if "error" in got:
        if got["unsupported"]:
            verify.unsupported(RuntimeError(got["error"]))
        pytest.fail(got["error"])
    verify.exact(got["k_cache"], expected_k_cache, "k_cache after append")
    verify.close(got["out"], expected, "attention", dtype)
