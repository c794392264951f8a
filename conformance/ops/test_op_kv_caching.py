"""kv_caching (upstream InfiniCore; NVIDIA-class backends only): append the new K/V of each
sequence to its own contiguous cache row at that sequence's past length.

    k_cache, v_cache  [batch, kv_heads, max_seq_len, head_dim]   any strides
    k, v              [batch, kv_heads, seq_len, head_dim]       any strides
    past_kv_lengths   [batch], i32 or i64 (contiguous)

k_cache[b, h, past[b] + i] = k[b, h, i] for i < seq_len: a copy, so it is exact, and every
other element of the cache (and of the buffer around a narrowed cache) is left as it was.
"""

from __future__ import annotations

import numpy as np
import pytest

from .common import unsupported_guard
from .references.kv_caching import CASES, Prepared, prepare


def check_caches(p: Prepared, verify) -> None:
    for name in ("k_cache", "v_cache"):
        base, sl = p.buffers[name]
        after = base.numpy().astype(np.float64)
        verify.exact(after[sl], p.expected[name], name, standard="copy")
        keep = ~p.written[name]
        verify.exact(after[keep], p.before[name][keep], f"{name}: rows not written",
                     standard="copy (untouched memory)")


@pytest.mark.parametrize("case", list(CASES))
def test_op_kv_caching(case, dtype, infini_device, verify):
    p = prepare(case, dtype, infini_device)
    verify.param(case=case, k_cache=p.args[0].describe(), k=p.args[2].describe(),
                       past_kv_lengths=p.args[4].describe(), past=list(CASES[case]["past"]))
    with unsupported_guard(verify):
        p.call()
    check_caches(p, verify)
