"""paged_caching (upstream InfiniCore; NVIDIA-class backends only): write each new token's
K/V into its slot of a block-table (paged) cache pool.

    k_cache, v_cache  [num_blocks, kv_heads, block_size, head_dim]  last dim contiguous
    k, v              [num_tokens, kv_heads, head_dim]  any token stride; heads packed
    slot_mapping      [num_tokens], i64: block * block_size + row; a negative slot is a
                      padding token and is not written

k_cache[slot // block_size, :, slot % block_size] = k[i]: a copy, so it is exact, and no
other row of the pool changes (see paged_layout.py for the layouts).
"""

from __future__ import annotations

import numpy as np
import pytest

from .common import unsupported_guard
from .references.paged_caching import CASES, prepare


@pytest.mark.parametrize("case", list(CASES))
def test_op_paged_caching(case, dtype, infini_device, verify):
    p = prepare(case, dtype, infini_device)
    verify.param(case=case, k_cache=p.args[0].describe(), k=p.args[2].describe(),
                       slot_mapping=p.host["slot_mapping"].tolist(),
                       block_tables=p.layout.block_tables.tolist())
    with unsupported_guard(verify):
        p.call()
    for name, t in (("k_cache", p.args[0]), ("v_cache", p.args[1])):
        after = t.numpy().astype(np.float64)
        verify.exact(after, p.expected[name], name, standard="copy")
        keep = ~p.written  # [num_blocks, block_size]: index the pools by (block, row)
        verify.exact(after.transpose(0, 2, 1, 3)[keep],
                     p.before[name].transpose(0, 2, 1, 3)[keep], f"{name}: slots not written",
                     standard="copy (untouched memory)")
