"""Per-op benchmarks at SmolLM2-135M shapes: each op the model runs, InfiniCore vs the
equivalent torch op on the same device and the same (dtype-rounded) inputs.

Phases: a prefill of `seq` tokens (no cache), and one decode token against a cache of
`decode_cache` positions (the attention ops see cache + 1 keys). lm_head and the token
pick only ever see the last position, so they have the same shape in every phase and
run in the decode phase only. The torch side mirrors HF eager where the model's layout is
the same (F.linear-style matmul, F.rms_norm, rotate_half RoPE, masked softmax in float32,
silu * up, index_select, argmax); the attention gemms use our grouped layout on both
sides ([batch * kv_heads, group * seq, head_dim]) so the inputs are identical.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from conformance.ops.common import host, rng_for, unsupported_guard
from infinilm_models.runtime import DType, Tensor, ops

from .peaks import throughput
from .timing import (
    infini_sync,
    ratio_to,
    run_benchmark,
    torch_device_for,
    torch_note,
    torch_sync,
)

H, INTER, NH, NKV, D, VOCAB = 576, 1536, 9, 3, 64, 49152
G = NH // NKV
EPS = 1e-5
ROWS_CHECKED = 4  # the accuracy gate looks at a slice: cheap even at batch 8 x 1024
TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}

OPS = ["embed", "rms_norm", "q_proj", "kv_proj", "rope", "cache_write", "query_heads",
       "attn_scores", "causal_softmax", "attn_values", "attn_tokens", "o_proj", "add",
       "gate_up_proj", "swiglu", "down_proj", "lm_head", "argmax"]
LAST_TOKEN_OPS = {"lm_head", "argmax"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "phase" not in metafunc.fixturenames:
        return
    from .timing import resolve_scale

    scale = resolve_scale(metafunc.config)
    phases = [f"prefill{s}" for s in scale.prefill_seqs] + [f"decode{scale.decode_cache}"]
    cases = [(op, ph, b) for ph in phases for b in scale.batches for op in OPS
             if ph.startswith("decode") or op not in LAST_TOKEN_OPS]
    metafunc.parametrize("op,phase,batch", cases,
                         ids=[f"{op}-{ph}-b{b}" for op, ph, b in cases])


@dataclass
class Case:
    """One op configuration: both implementations, their checks, bytes and FLOPs."""

    infini: Callable[[], None]
    torch: Callable[[], None]
    check_infini: Callable[[object], None]
    check_torch: Callable[[object], None]
    nbytes: int
    flops: int
    shapes: dict = field(default_factory=dict)


class Maker:
    """Uploads the same dtype-rounded host values to InfiniCore and to torch."""

    def __init__(self, device, tdev: str, dtype: str, key: tuple) -> None:
        import torch

        self.device, self.tdev, self.dtype = device, tdev, dtype
        self.tdtype = getattr(torch, TORCH_DTYPES[dtype])
        self.isz = DType.parse(dtype).itemsize
        self.rng = rng_for("perf", *key)

    def pair(self, shape, scale: float = 1.0):
        import torch

        a = host(shape, self.dtype, self.rng, scale)
        t = torch.from_numpy(a.astype(np.float32)).to(self.tdev, self.tdtype)
        return a, Tensor.from_numpy(a, self.device, self.dtype), t

    def out(self, shape):
        import torch

        return (Tensor.zeros(shape, self.dtype, self.device),
                torch.zeros(shape, device=self.tdev, dtype=self.tdtype))


def _t2np(t) -> np.ndarray:
    import torch

    return t.detach().to("cpu", torch.float64).numpy()


def build(op: str, phase: str, batch: int, dtype: str, device, tdev: str, verify) -> Case:
    import torch
    import torch.nn.functional as F

    m = Maker(device, tdev, dtype, (op, phase, batch, dtype))
    isz = m.isz
    decode = phase.startswith("decode")
    s = 1 if decode else int(phase.removeprefix("prefill"))
    cached = int(phase.removeprefix("decode")) if decode else 0
    total = cached + s
    t_ = batch * s
    close = verify.close

    def linear(k: int, n: int, rows: int) -> Case:
        a, a_i, a_t = m.pair((rows, k))
        w, w_i, w_t = m.pair((n, k), 1.0 / math.sqrt(k))
        c_i, c_t = m.out((rows, n))
        w_it, w_tt = w_i.transpose(0, 1), w_t.t()
        r = min(rows, ROWS_CHECKED)
        ref = a[:r] @ w.T
        return Case(
            lambda: ops.gemm(c_i, a_i, w_it), lambda: torch.matmul(a_t, w_tt, out=c_t),
            lambda v: close(c_i.narrow(0, 0, r).numpy(), ref, "gemm", dtype),
            lambda v: close(_t2np(c_t[:r]), ref, "gemm", dtype),
            (rows * k + n * k + rows * n) * isz, 2 * rows * n * k,
            {"a": [rows, k], "w": [n, k]})

    if op == "embed":
        ids = m.rng.integers(0, VOCAB, t_)
        w, w_i, w_t = m.pair((VOCAB, H))
        o_i, o_t = m.out((t_, H))
        ids_t = torch.from_numpy(ids).to(tdev)
        from infinilm_models.models.llama.fusion import Fused
        from infinilm_models.models.llama.modeling_llama import LlamaModel

        # the plain path (host gather + one copy); the embedding op has its own op check
        owner = SimpleNamespace(embed_tokens=w_i, _host_table=None, fused=Fused())

        ref = w[ids]
        return Case(
            lambda: LlamaModel.embed(owner, ids, o_i),
            lambda: torch.index_select(w_t, 0, ids_t, out=o_t),
            lambda v: v.exact(o_i.numpy().astype(np.float64), ref),
            lambda v: v.exact(_t2np(o_t), ref),
            2 * t_ * H * isz, 0, {"ids": [t_], "weight": [VOCAB, H]})
    if op == "rms_norm":
        x, x_i, x_t = m.pair((t_, H))
        w = 1.0 + 0.2 * m.rng.standard_normal(H)
        w = w.astype(np.float32).astype(DType.parse(dtype).numpy).astype(np.float64)
        w_i = Tensor.from_numpy(w, device, dtype)
        w_t = torch.from_numpy(w.astype(np.float32)).to(tdev, m.tdtype)
        y_i, _ = m.out((t_, H))
        r = min(t_, ROWS_CHECKED)
        xr = x[:r]
        ref = xr / np.sqrt((xr * xr).mean(-1, keepdims=True) + EPS) * w
        holder = {}
        return Case(
            lambda: ops.rms_norm(y_i, x_i, w_i, EPS),
            lambda: holder.__setitem__("y", F.rms_norm(x_t, (H,), w_t, EPS)),
            lambda v: close(y_i.narrow(0, 0, r).numpy(), ref, "rms_norm", dtype),
            lambda v: close(_t2np(holder["y"][:r]), ref, "rms_norm", dtype),
            (2 * t_ * H + H) * isz, 4 * t_ * H, {"x": [t_, H]})
    if op == "q_proj":
        return linear(H, NH * D, t_)
    if op == "kv_proj":
        return linear(H, NKV * D, t_)
    if op == "o_proj":
        return linear(NH * D, H, t_)
    if op == "gate_up_proj":
        return linear(H, INTER, t_)
    if op == "down_proj":
        return linear(INTER, H, t_)
    if op == "lm_head":
        return linear(H, VOCAB, batch)
    if op == "rope":
        x, x_i, x_t = m.pair((t_, NH, D))
        y_i, y_t = m.out((t_, NH, D))
        pos = np.tile(np.arange(cached, cached + s), batch).astype(np.int32)
        inv = 1.0 / (100000.0 ** (np.arange(0, D, 2) / D))
        ang = np.outer(np.arange(total, dtype=np.float32), inv.astype(np.float32))
        rnd = DType.parse(dtype).numpy
        sin = np.sin(ang).astype(np.float32).astype(rnd).astype(np.float64)
        cos = np.cos(ang).astype(np.float32).astype(rnd).astype(np.float64)
        sin_i, cos_i = Tensor.from_numpy(sin, device, dtype), Tensor.from_numpy(cos, device, dtype)
        pos_i = Tensor.from_numpy(pos, device, "i32")
        # HF gathers cos/sin per position once per forward, outside the per-layer rope.
        cos_full = np.concatenate([cos, cos], -1)[pos]
        sin_full = np.concatenate([sin, sin], -1)[pos]
        cos_t = torch.from_numpy(cos_full.astype(np.float32)).to(tdev, m.tdtype)[:, None, :]
        sin_t = torch.from_numpy(sin_full.astype(np.float32)).to(tdev, m.tdtype)[:, None, :]
        half = D // 2

        def torch_rope():
            rot = torch.cat((-x_t[..., half:], x_t[..., :half]), dim=-1)
            torch.add(x_t * cos_t, rot * sin_t, out=y_t)

        r = min(t_, ROWS_CHECKED)
        xr = x[:r]
        rot = np.concatenate([-xr[..., half:], xr[..., :half]], -1)
        ref = xr * cos_full[:r, None, :] + rot * sin_full[:r, None, :]
        return Case(
            lambda: ops.rope(y_i, x_i, pos_i, sin_i, cos_i, ops.RoPEAlgo.GPT_NEOX), torch_rope,
            lambda v: close(y_i.narrow(0, 0, r).numpy(), ref, "rope", dtype),
            lambda v: close(_t2np(y_t[:r]), ref, "rope", dtype),
            (2 * t_ * NH * D + 2 * total * half) * isz + 4 * t_, 3 * t_ * NH * D,
            {"x": [t_, NH, D]})
    if op in ("cache_write", "query_heads", "attn_tokens"):
        heads = NKV if op == "cache_write" else NH
        src, src_i, src_t = m.pair((t_, heads * D))
        if op == "cache_write":  # [b, s, kv, d] -> cache slot [b, kv, s, d] of a max_len cache
            dst_i, dst_t = m.out((batch, NKV, total, D))
            dst_i, dst_t = dst_i.narrow(2, cached, s), dst_t[:, :, cached:cached + s]
            sv_i = src_i.view(batch, s, NKV, D).permute(0, 2, 1, 3)
            sv_t = src_t.view(batch, s, NKV, D).permute(0, 2, 1, 3)
            ref = src.reshape(batch, s, NKV, D).transpose(0, 2, 1, 3)
        elif op == "query_heads":  # q [b, s, kv, g, d] -> [b, kv, g, s, d]
            dst_i, dst_t = m.out((batch, NKV, G, s, D))
            sv_i = src_i.view(batch, s, NKV, G, D).permute(0, 2, 3, 1, 4)
            sv_t = src_t.view(batch, s, NKV, G, D).permute(0, 2, 3, 1, 4)
            ref = src.reshape(batch, s, NKV, G, D).transpose(0, 2, 3, 1, 4)
        else:  # attention output [b, kv, g, s, d] -> tokens [b, s, kv, g, d]
            dst_i, dst_t = m.out((batch, s, NKV, G, D))
            sv_i = src_i.view(batch, NKV, G, s, D).permute(0, 3, 1, 2, 4)
            sv_t = src_t.view(batch, NKV, G, s, D).permute(0, 3, 1, 2, 4)
            ref = src.reshape(batch, NKV, G, s, D).transpose(0, 3, 1, 2, 4)
        return Case(
            lambda: ops.copy(dst_i, sv_i), lambda: dst_t.copy_(sv_t),
            lambda v: v.exact(dst_i.numpy().astype(np.float64), ref),
            lambda v: v.exact(_t2np(dst_t), ref),
            2 * t_ * heads * D * isz, 0, {"src": list(sv_i.shape)})
    rows = batch * NKV  # one matrix per (sequence, kv head); its G query heads stacked
    if op == "attn_scores":
        q, q_i, q_t = m.pair((rows, G * s, D))
        k, k_i, k_t = m.pair((rows, total, D), 1.0 / math.sqrt(D))
        sc_i, sc_t = m.out((rows, G * s, total))
        alpha = 1.0 / math.sqrt(D)
        kT_i, kT_t = k_i.transpose(1, 2), k_t.transpose(1, 2)
        ref = alpha * q[0] @ k[0].T
        return Case(
            lambda: ops.gemm(sc_i, q_i, kT_i, alpha=alpha),
            lambda: torch.baddbmm(sc_t, q_t, kT_t, beta=0.0, alpha=alpha, out=sc_t),
            lambda v: close(sc_i.select(0, 0).numpy(), ref, "gemm", dtype),
            lambda v: close(_t2np(sc_t[0]), ref, "gemm", dtype),
            (rows * G * s * D + rows * total * D + rows * G * s * total) * isz,
            2 * rows * G * s * total * D, {"q": [rows, G * s, D], "k": [rows, total, D]})
    if op == "causal_softmax":
        x, x_i, x_t = m.pair((rows * G, s, total), 2.0)
        y_i, y_t = m.out((rows * G, s, total))
        mask = np.triu(np.full((s, total), -np.inf), k=total - s + 1)
        mask_t = torch.from_numpy(mask.astype(np.float32)).to(tdev, m.tdtype)

        def torch_softmax():  # HF eager: add the mask, softmax in float32, cast back
            y_t.copy_(torch.softmax(x_t + mask_t, dim=-1, dtype=torch.float32))

        e = np.exp(x[0] + mask - (x[0] + mask).max(-1, keepdims=True))
        ref = e / e.sum(-1, keepdims=True)
        return Case(
            lambda: ops.causal_softmax(y_i, x_i), torch_softmax,
            lambda v: close(y_i.select(0, 0).numpy(), ref, "causal_softmax", dtype),
            lambda v: close(_t2np(y_t[0]), ref, "causal_softmax", dtype),
            2 * rows * G * s * total * isz, 5 * rows * G * s * total, {"x": list(x.shape)})
    if op == "attn_values":
        p = np.abs(m.rng.standard_normal((rows, G * s, total))) / total
        p = p.astype(np.float32).astype(DType.parse(dtype).numpy).astype(np.float64)
        p_i = Tensor.from_numpy(p, device, dtype)
        p_t = torch.from_numpy(p.astype(np.float32)).to(tdev, m.tdtype)
        v, v_i, v_t = m.pair((rows, total, D))
        o_i, o_t = m.out((rows, G * s, D))
        ref = p[0] @ v[0]
        return Case(
            lambda: ops.gemm(o_i, p_i, v_i), lambda: torch.bmm(p_t, v_t, out=o_t),
            lambda v_: close(o_i.select(0, 0).numpy(), ref, "gemm", dtype),
            lambda v_: close(_t2np(o_t[0]), ref, "gemm", dtype),
            (rows * G * s * total + rows * total * D + rows * G * s * D) * isz,
            2 * rows * G * s * total * D, {"p": list(p.shape), "v": [rows, total, D]})
    if op == "add":
        a, a_i, a_t = m.pair((t_, H))
        b, b_i, b_t = m.pair((t_, H))
        c_i, c_t = m.out((t_, H))
        return Case(
            lambda: ops.add(c_i, a_i, b_i), lambda: torch.add(a_t, b_t, out=c_t),
            lambda v: close(c_i.numpy(), a + b, "add", dtype),
            lambda v: close(_t2np(c_t), a + b, "add", dtype),
            3 * t_ * H * isz, t_ * H, {"a": [t_, H]})
    if op == "swiglu":
        up, up_i, up_t = m.pair((t_, INTER))
        gate, gate_i, gate_t = m.pair((t_, INTER))
        c_i, c_t = m.out((t_, INTER))
        ref = up * gate / (1.0 + np.exp(-gate))
        return Case(
            lambda: ops.swiglu(c_i, up_i, gate_i),
            lambda: torch.mul(F.silu(gate_t), up_t, out=c_t),
            lambda v: close(c_i.numpy(), ref, "swiglu", dtype),
            lambda v: close(_t2np(c_t), ref, "swiglu", dtype),
            3 * t_ * INTER * isz, 5 * t_ * INTER, {"x": [t_, INTER]})
    if op == "argmax":
        lg, lg_i, lg_t = m.pair((batch, VOCAB))
        res = [Tensor.zeros((), "i32", device) for _ in range(batch)]
        rows_i = [lg_i.select(0, b) for b in range(batch)]
        holder = {}
        ref = lg.argmax(-1).astype(np.float64)

        def infini_pick():  # InfiniCore's random_sample with topk=1 is the argmax
            for b in range(batch):
                ops.random_sample(res[b], rows_i[b], 0.0, 0.0, 1, 1.0)

        return Case(
            infini_pick, lambda: holder.__setitem__("ids", torch.argmax(lg_t, dim=-1)),
            lambda v: v.exact(np.array([int(r.numpy()) for r in res], np.float64), ref),
            lambda v: v.exact(_t2np(holder["ids"]), ref),
            batch * VOCAB * isz, batch * VOCAB, {"logits": [batch, VOCAB]})
    raise ValueError(op)


@pytest.mark.parametrize("impl", ["torch", "infinicore"])
def test_perf_op(benchmark, impl, op, phase, batch, dtype, infini_device, device_peak,
                 bench_scale, verify):
    tdev = torch_device_for(infini_device)
    with unsupported_guard(verify):
        case = build(op, phase, batch, dtype, infini_device, tdev, verify)
        if impl == "infinicore":
            fn, check, sync = case.infini, case.check_infini, infini_sync(infini_device)
        else:
            fn, check, sync = case.torch, case.check_torch, torch_sync(tdev)

        def timed() -> None:
            fn()
            sync()  # inside the timed call: the kernel's time, not its launch

        # First call: descriptors/workspace are created here, outside the timed region,
        # and the output it produced is what the accuracy gate judges.
        t = time.perf_counter()
        if benchmark.disabled:
            benchmark.pedantic(timed)  # timing off: pytest-benchmark runs it once
        else:
            timed()
    first = time.perf_counter() - t
    check(verify)
    group = f"op-{op}-{phase}-b{batch}-{dtype}"
    benchmark.extra_info.update(op=op, phase=phase, batch=batch, dtype=dtype,
                                device=str(infini_device), torch_device=tdev,
                                shapes=case.shapes, bytes=case.nbytes, flops=case.flops)
    info = run_benchmark(benchmark, timed, lambda: None, bench_scale, group=group, impl=impl,
                         first_call_s=first)
    perf = {"group": group, "impl": impl, "scale": bench_scale.name, "bytes": case.nbytes,
            "flops": case.flops, "torch_device": tdev}
    note = torch_note(infini_device, tdev)
    if note:  # the ratio "vs torch" is against CPU torch: said with it
        benchmark.extra_info["torch_note"] = perf["torch_note"] = note
    if info:
        tp = throughput(info["mean_s"], case.nbytes, case.flops, dtype, device_peak)
        benchmark.extra_info.update(tp)
        perf.update(info, **tp)
        if impl == "infinicore":
            ratio = ratio_to(group, "infinicore", "torch")
            if ratio is not None:
                benchmark.extra_info["time_ratio_vs_torch"] = ratio
                perf["time_ratio_vs_torch"] = ratio
    verify.record_perf(perf["group"], perf["impl"], perf)
