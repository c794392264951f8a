"""rope: GPT-NeoX (HF LLaMA's rotate_half) and GPT-J, on q and on k sliced out of a fused
QKV buffer, prefill and decode positions, flattened batches, in place, odd head_dim."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models.runtime import Tensor, ops

from .common import host, rng_for, to_device, unsupported_guard
from .shapes import HEAD_DIM, HEADS, KV_HEADS, PREFILL
from .sweep import describe

MAX_POS = 1024
THETA = 1e5

# name: (tokens, heads, head_dim, positions kind, layout)
#   positions: "prefill" 0..n-1, "decode" [pos], "batch2" two sequences flattened
#   layout: "contiguous", "qkv_slice" (k inside a fused [tokens, q+k+v heads, d] buffer),
#           "inplace" (y is x)
CASES = {
    "q_prefill": (PREFILL, HEADS, HEAD_DIM, "prefill", "contiguous"),
    "k_prefill_qkv_slice": (PREFILL, KV_HEADS, HEAD_DIM, "prefill", "qkv_slice"),
    "q_decode": (1, HEADS, HEAD_DIM, "decode", "contiguous"),
    "batch2_flattened": (2 * 8, KV_HEADS, HEAD_DIM, "batch2", "contiguous"),
    "inplace": (PREFILL, HEADS, HEAD_DIM, "prefill", "inplace"),
    "odd_head_dim": (5, 3, 24, "prefill", "contiguous"),
}


def tables(head_dim: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    inv = 1.0 / (THETA ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    ang = np.outer(np.arange(MAX_POS, dtype=np.float64), inv)
    from infinilm_models.runtime import DType

    npd = DType.parse(dtype).numpy
    return (np.sin(ang).astype(np.float32).astype(npd).astype(np.float64),
            np.cos(ang).astype(np.float32).astype(npd).astype(np.float64))


def reference(x: np.ndarray, pos: np.ndarray, sin: np.ndarray, cos: np.ndarray,
              algo: str) -> np.ndarray:
    s, c = sin[pos][:, None, :], cos[pos][:, None, :]
    if algo == "gpt_neox":
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = x1 * c - x2 * s, x1 * s + x2 * c
    return out


def positions(kind: str, tokens: int) -> np.ndarray:
    if kind == "decode":
        return np.array([700], dtype=np.int32)
    if kind == "batch2":
        return np.concatenate([np.arange(8), np.arange(100, 108)]).astype(np.int32)
    return np.arange(tokens, dtype=np.int32)


@pytest.mark.parametrize("algo", ["gpt_neox", "gpt_j"])
@pytest.mark.parametrize("case", list(CASES))
def test_op_rope(case, algo, dtype, infini_device, verify):
    tokens, heads, d, pos_kind, layout = CASES[case]
    rng = rng_for("rope", case, algo, dtype)
    x = host((tokens, heads, d), dtype, rng)
    pos = positions(pos_kind, tokens)
    sin, cos = tables(d, dtype)
    expected = reference(x, pos, sin, cos, algo)
    if layout == "qkv_slice":
        fused = np.zeros((tokens, HEADS + 2 * KV_HEADS, d))
        fused[:, HEADS:HEADS + heads] = x
        buf = to_device(fused, infini_device, dtype)
        xt = buf.narrow(1, HEADS, heads)
        yt = xt  # the model rotates k in place inside the fused buffer
    else:
        xt = to_device(x, infini_device, dtype)
        yt = xt if layout == "inplace" else Tensor.empty(x.shape, dtype, infini_device)
    verify.info.update(x=xt.describe(), y=yt.describe(), positions=pos_kind, algo=algo)
    with unsupported_guard(verify):
        ops.rope(yt, xt, to_device(pos, infini_device, "i32"),
                 to_device(sin, infini_device, dtype), to_device(cos, infini_device, dtype), algo)
    verify.close(yt.numpy(), expected, "rope", dtype)
    if layout == "qkv_slice":
        rest = buf.numpy().astype(np.float64)
        rest[:, HEADS:HEADS + heads] = 0
        verify.exact(rest, np.zeros_like(rest), "fused buffer outside the k slice",
                     standard="copy (untouched memory)")


def test_op_rope_sweep(sweep_case, dtype, infini_device, verify):
    p = sweep_case.params
    verify.info.update(describe(sweep_case))
    tokens, heads, d, algo = p["tokens"], p["heads"], p["head_dim"], p["algo"]
    rng = rng_for("rope-sweep", sweep_case.seed, sweep_case.name, dtype)
    x = host((tokens, heads, d), dtype, rng)
    pos = np.array(p["pos"], dtype=np.int32)
    sin, cos = tables(d, dtype)
    y = Tensor.empty(x.shape, dtype, infini_device)
    with unsupported_guard(verify):
        ops.rope(y, to_device(x, infini_device, dtype), to_device(pos, infini_device, "i32"),
                 to_device(sin, infini_device, dtype), to_device(cos, infini_device, dtype), algo)
    verify.close(y.numpy(), reference(x, pos, sin, cos, algo), "rope", dtype)
