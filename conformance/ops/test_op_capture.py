"""Capturability: can each op the decode step calls be captured into a device graph and
replayed, with the output of a direct call? Per op at the model's decode shapes
(SmolLM2-135M's, batch 1). An op that allocates, synchronizes or reads pageable host
memory inside its call cannot be; the model then runs it eagerly between captured
segments (runtime/graph.py). `unsupported` where the backend has no graph API."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models.runtime import Tensor, ops

from .common import host, rng_for, to_device, unsupported_guard
from .shapes import CACHE_LEN, GROUP, HEAD_DIM, HEADS, HIDDEN, INTER, KV_HEADS, VOCAB


def _case(name: str, dtype: str, device):
    """(call, output tensor, check name) of one decode-step op call on fixed tensors."""
    rng = rng_for("capture", name, dtype)
    t = lambda shape, scale=1.0: to_device(host(shape, dtype, rng, scale), device, dtype)  # noqa: E731
    if name == "gemm_qkv":
        x, w = t((1, HIDDEN)), t((HIDDEN + 2 * KV_HEADS * HEAD_DIM, HIDDEN), HIDDEN ** -0.5)
        out = Tensor.zeros((1, w.shape[0]), dtype, device)
        return (lambda: ops.gemm(out, x, w.transpose(0, 1))), out, "gemm"
    if name == "gemm_residual":
        x, w = t((1, INTER)), t((HIDDEN, INTER), INTER ** -0.5)
        out = t((1, HIDDEN))
        return (lambda: ops.gemm(out, x, w.transpose(0, 1), 1.0, 1.0)), out, "gemm"
    if name == "gemm_attention":
        q, k = t((KV_HEADS, GROUP, HEAD_DIM)), t((KV_HEADS, CACHE_LEN + 1, HEAD_DIM), 0.125)
        out = t((KV_HEADS, GROUP, CACHE_LEN + 1))
        return (lambda: ops.gemm(out, q, k.transpose(1, 2), 0.125, 1.0)), out, "gemm"
    if name == "rms_norm":
        x, w = t((1, HIDDEN)), t((HIDDEN,))
        out = Tensor.zeros((1, HIDDEN), dtype, device)
        return (lambda: ops.rms_norm(out, x, w, 1e-5)), out, "rms_norm"
    if name == "rope":
        x = t((1, HEADS + KV_HEADS, HEAD_DIM))
        pos = to_device(np.array([37], dtype=np.int32), device, "i32")
        sin, cos = t((CACHE_LEN, HEAD_DIM // 2)), t((CACHE_LEN, HEAD_DIM // 2))
        out = Tensor.zeros(x.shape, dtype, device)
        return (lambda: ops.rope(out, x, pos, sin, cos)), out, "rope"
    if name == "causal_softmax":
        x = t((HEADS, 1, CACHE_LEN + 1), 4.0)
        out = Tensor.zeros(x.shape, dtype, device)
        return (lambda: ops.causal_softmax(out, x)), out, "causal_softmax"
    if name == "swiglu":
        up, gate = t((1, INTER)), t((1, INTER))
        out = Tensor.zeros((1, INTER), dtype, device)
        return (lambda: ops.swiglu(out, up, gate)), out, "swiglu"
    if name in ("add", "mul"):
        a, b = t((1, HIDDEN)), t((1, HIDDEN))
        out = Tensor.zeros((1, HIDDEN), dtype, device)
        fn = ops.add if name == "add" else ops.mul
        return (lambda: fn(out, a, b)), out, name
    if name == "rearrange_slot":  # the K append into the decode slot
        cache = Tensor.zeros((1, KV_HEADS, CACHE_LEN + 1, HEAD_DIM), dtype, device)
        k = t((1, KV_HEADS * HEAD_DIM)).view(1, 1, KV_HEADS, HEAD_DIM).permute(0, 2, 1, 3)
        return (lambda: ops.copy(cache.narrow(2, CACHE_LEN, 1), k)), cache, None
    if name == "random_sample":
        logits = t((VOCAB,))
        out = Tensor.zeros((), "i32", device)
        return (lambda: ops.random_sample(out, logits)), out, None
    # upstream's fused ops of the decode step (fusion.py)
    if name == "add_rms_norm":
        a, b, w = t((1, HIDDEN)), t((1, HIDDEN)), t((HIDDEN,))
        y, res = Tensor.zeros((1, HIDDEN), dtype, device), Tensor.zeros((1, HIDDEN), dtype, device)
        return (lambda: ops.add_rms_norm(y, res, a, b, w, 1e-5)), y, "add_rms_norm"
    if name == "embedding":
        table = t((VOCAB, HIDDEN))
        ids = to_device(np.array([VOCAB - 1], dtype=np.int64), device, "i64")
        out = Tensor.zeros((1, HIDDEN), dtype, device)
        return (lambda: ops.embedding(out, ids, table)), out, None
    if name == "silu_and_mul":
        x = t((1, 2 * INTER))
        out = Tensor.zeros((1, INTER), dtype, device)
        return (lambda: ops.silu_and_mul(out, x)), out, "silu_and_mul"
    if name == "kv_caching":
        kc = Tensor.zeros((1, KV_HEADS, CACHE_LEN, HEAD_DIM), dtype, device)
        vc = Tensor.zeros((1, KV_HEADS, CACHE_LEN, HEAD_DIM), dtype, device)
        k, v = t((1, KV_HEADS, 1, HEAD_DIM)), t((1, KV_HEADS, 1, HEAD_DIM))
        past = to_device(np.array([37], dtype=np.int64), device, "i64")
        return (lambda: ops.kv_caching(kc, vc, k, v, past)), kc, None
    raise KeyError(name)


# (op, case): the record carries the op captured, so the report's op matrix shows
# capturability as a column of that op's row.
CASES = [("gemm", "gemm_qkv"), ("gemm", "gemm_residual"), ("gemm", "gemm_attention"),
         ("rms_norm", "rms_norm"), ("rope", "rope"), ("causal_softmax", "causal_softmax"),
         ("swiglu", "swiglu"), ("add", "add"), ("mul", "mul"), ("rearrange", "rearrange_slot"),
         ("random_sample", "random_sample"), ("add_rms_norm", "add_rms_norm"),
         ("embedding", "embedding"), ("silu_and_mul", "silu_and_mul"),
         ("kv_caching", "kv_caching")]


@pytest.mark.parametrize("op,case", [pytest.param(o, c, id=c) for o, c in CASES])
def test_op_capture(op, case, dtype, infini_device, verify):
    from infinilm_models.runtime.device import Stream
    from infinilm_models.runtime.graph import CapturedStep, GraphError, graph_backend

    if graph_backend(infini_device) is None:
        verify.unsupported(RuntimeError(f"{infini_device.type}: no graph API"))
    call, out, check = _case(case, dtype, infini_device)
    before = out.numpy()
    with unsupported_guard(verify):  # an op this build lacks (or refuses) is unsupported
        call()  # direct call: the expected output, and handles/descriptors created
    infini_device.synchronize()
    want = out.numpy().astype(np.float64)
    out.copy_from_numpy(np.asarray(before).reshape(out.shape))  # beta = 1 reads it
    stream = Stream(infini_device)
    try:
        step = CapturedStep(infini_device, stream, call).capture()
        step.replay()
        stream.synchronize()
    except GraphError as e:
        verify.param(capture_error=str(e))
        raise AssertionError(f"{case}: not capturable on {infini_device.type}: {e}") from None
    got = out.numpy().astype(np.float64)
    step.close()
    verify.param(graphs=step.graphs, eager_calls=step.eager_calls,
                       graph_api=getattr(step.backend, "name", "?"))
    if check is None:
        verify.exact(got, want, "replayed vs direct call", standard="copy / integer output")
    else:
        verify.close(got, want, check, dtype, "replayed vs direct call")
