"""paged_attention (upstream InfiniCore; NVIDIA-class backends only): one decode query per
sequence attending over that sequence's tokens in a block-table (paged) KV cache.

    out, q            [num_seqs, heads, head_dim]  f16/bf16 (f32 is refused); head_dim in
                      {64, 128, 192, 256, 576}; heads packed (head stride = head_dim)
    k_cache, v_cache  [num_blocks, kv_heads, block_size, head_dim]  last dim contiguous
    block_tables      [num_seqs, max_blocks_per_seq]  contiguous  } one index dtype:
    seq_lens          [num_seqs]  contiguous                      } i64 (the header's), i32
    alibi_slopes      [heads] f32, or NULL (the LLaMA path)
    scale             float (1 / sqrt(head_dim) here)

out[s, h] = softmax(scale * q[s, h] . K_s^T + alibi) V_s over the seq_lens[s] tokens of
sequence s (block_tables[s, t // block_size], row t % block_size), query head h reading kv
head h // (heads / kv_heads).
"""

from __future__ import annotations

import pytest

from .common import unsupported_guard
from .references.paged_attention import CASES, prepare


@pytest.mark.parametrize("case", list(CASES))
def test_op_paged_attention(case, dtype, infini_device, verify):
    p = prepare(case, dtype, infini_device)
    verify.param(case=case, q=p.args[1].describe(), k_cache=p.args[2].describe(),
                       block_tables=p.layout.block_tables.tolist(),
                       seq_lens=list(CASES[case]["lens"]), alibi=CASES[case]["alibi"])
    with unsupported_guard(verify):
        p.call()
    verify.close(p.out.numpy(), p.expected, "paged_attention", dtype)
