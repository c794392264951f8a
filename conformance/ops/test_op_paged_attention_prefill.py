"""paged_attention_prefill (upstream InfiniCore; NVIDIA-class backends only): causal
attention of a packed batch of new query tokens over a block-table (paged) KV cache that
already holds them (paged_caching runs first) and each sequence's history.

    out, q            [total_q_tokens, heads, head_dim]  f16/bf16 (f32 is refused); head_dim
                      in {64, 128, 192, 256, 576}; last dim contiguous
    k_cache, v_cache  [num_blocks, kv_heads, block_size, head_dim]  last dim contiguous
    block_tables      [num_seqs, max_blocks_per_seq]  last dim contiguous } one index
    seq_lens          [num_seqs]: total KV tokens, the new ones included  } dtype: i32 or
    cum_seq_lens_q    [num_seqs + 1]: prefix sum of the new tokens         } i64
    alibi_slopes      [heads] f32, or NULL (the LLaMA path)
    scale             float (1 / sqrt(head_dim) here)

Sequence s owns q rows cum[s]..cum[s+1]-1; its j-th new token sits at position
history + j, history = seq_lens[s] - (cum[s+1] - cum[s]), and sees keys 0..history + j.
"""

from __future__ import annotations

import pytest

from .common import unsupported_guard
from .references.paged_attention_prefill import CASES, prepare


@pytest.mark.parametrize("case", list(CASES))
def test_op_paged_attention_prefill(case, dtype, infini_device, verify):
    p = prepare(case, dtype, infini_device)
    c = CASES[case]
    verify.param(case=case, q=p.args[1].describe(), k_cache=p.args[2].describe(),
                       block_tables=p.layout.block_tables.tolist(), q_lens=list(c["q_lens"]),
                       history=list(c["history"]), alibi=c["alibi"])
    with unsupported_guard(verify):
        p.call()
    verify.close(p.out.numpy(), p.expected, "paged_attention_prefill", dtype)
