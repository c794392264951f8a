"""Probe: the ops of one attention layer at batch 8 x 32 tokens (SmolLM2 heads), bf16 vs f32,
each against numpy on the same inputs."""
import sys

import ml_dtypes
import numpy as np
import torch  # noqa: F401

from conformance.judge import error_metrics
from infinilm_models.runtime import Tensor, ops

dev = sys.argv[1]
NP = {"f32": np.float32, "bf16": ml_dtypes.bfloat16, "f16": np.float16}
B, S, NKV, G, D, MAX = 8, 32, 3, 3, 64, 64
NH = NKV * G
rng = np.random.default_rng(0)
def rnd(shape, dt):
    return rng.standard_normal(shape).astype(NP[dt]).astype(np.float64)
def rep(name, got, exp):
    got = got.astype(np.float64)
    bad = [b for b in range(got.shape[0]) if not np.allclose(got[b], exp[b], rtol=2e-2, atol=2e-2)]
    print(f"  {name}: nmse {error_metrics(got, exp)['nmse']:.3g}, leading-dim rows wrong: {bad[:12]}{'...' if len(bad) > 12 else ''} of {got.shape[0]}")
for dt in ("f32", "bf16", "f16"):
    print(dt)
    # 1. k [B*S, NKV*D] -> cache slot [B, NKV, S, D] inside [B, NKV, MAX, D]
    k = rnd((B * S, NKV * D), dt)
    kt = Tensor.from_numpy(k, dev, dt)
    cache = Tensor.zeros((B, NKV, MAX, D), dt, dev)
    ops.copy(cache.narrow(2, 0, S), kt.view(B, S, NKV, D).permute(0, 2, 1, 3))
    rep("k -> cache slot", cache.numpy()[:, :, :S], k.reshape(B, S, NKV, D).transpose(0, 2, 1, 3))
    # 2. q regroup [B, S, NKV, G, D] -> [B, NKV, G, S, D]
    q = rnd((B * S, NH * D), dt)
    qt = Tensor.from_numpy(q, dev, dt)
    qh = Tensor.zeros((B * NKV, G * S, D), dt, dev)
    ops.copy(qh.view(B, NKV, G, S, D), qt.view(B, S, NKV, G, D).permute(0, 2, 3, 1, 4))
    rep("q regroup", qh.numpy().reshape(B, NKV, G, S, D), q.reshape(B, S, NKV, G, D).transpose(0, 2, 3, 1, 4))
    # 3. causal softmax on [B*NKV*G, S, S] rows of MAX
    sc = rnd((B * NKV, G * S, MAX), dt)
    st = Tensor.from_numpy(sc, dev, dt)
    scores = st.narrow(2, 0, S)
    probs = scores.as_strided((B * NKV * G, S, S), (S * scores.strides[1], scores.strides[1], 1))
    ops.causal_softmax(probs, probs)
    x = sc[:, :, :S].reshape(B * NKV * G, S, S)
    mask = np.tril(np.ones((S, S), bool))
    e = np.where(mask, np.exp(x - np.where(mask, x, -np.inf).max(-1, keepdims=True)), 0)
    rep("causal_softmax", st.numpy()[:, :, :S].reshape(B * NKV * G, S, S), e / e.sum(-1, keepdims=True))
    # 4. attention output back to tokens [B*NKV, G*S, D] -> [B, S, NKV, G, D]
    a = rnd((B * NKV, G * S, D), dt)
    at = Tensor.from_numpy(a, dev, dt)
    tok = Tensor.zeros((B * S, NH * D), dt, dev)
    ops.copy(tok.view(B, S, NKV, G, D), at.view(B, NKV, G, S, D).permute(0, 3, 1, 2, 4))
    rep("attn -> tokens", tok.numpy().reshape(B, S, NKV, G, D), a.reshape(B, NKV, G, S, D).transpose(0, 3, 1, 2, 4))
    # 5. scores gemm: q_heads [B*NKV, G*S, D] x keys^T (cache view) -> scores rows of MAX
    qh_np = rnd((B * NKV, G * S, D), dt)
    kc = rnd((B, NKV, MAX, D), dt)
    kct = Tensor.from_numpy(kc, dev, dt)
    keys = kct.as_strided((B * NKV, S, D), (MAX * D, D, 1))
    sc_t = Tensor.zeros((B * NKV, G * S, MAX), dt, dev)
    ops.gemm(sc_t.narrow(2, 0, S), Tensor.from_numpy(qh_np, dev, dt), keys.transpose(1, 2), alpha=0.125)
    exp = 0.125 * qh_np @ kc.reshape(B * NKV, MAX, D)[:, :S].transpose(0, 2, 1)
    rep("scores gemm", sc_t.numpy()[:, :, :S], exp)
    # 6. values gemm: probs (rows of MAX) x values (cache view)
    pr = rnd((B * NKV, G * S, MAX), dt)
    prt = Tensor.from_numpy(pr, dev, dt).narrow(2, 0, S)
    vals = kct.as_strided((B * NKV, S, D), (MAX * D, D, 1))
    out = Tensor.zeros((B * NKV, G * S, D), dt, dev)
    ops.gemm(out, prt, vals)
    rep("values gemm", out.numpy(), pr[:, :, :S] @ kc.reshape(B * NKV, MAX, D)[:, :S])
    # 7. rope (NeoX) on [B*S, NH, D] with positions 0..S-1 per sequence
    from infinilm_models.runtime.ops import RoPEAlgo
    x = rnd((B * S, NH, D), dt)
    xt = Tensor.from_numpy(x, dev, dt)
    pos = np.tile(np.arange(S), B)
    inv = 1.0 / (100000.0 ** (np.arange(0, D, 2) / D))
    ang = np.arange(MAX)[:, None] * inv[None]
    sin_t = Tensor.from_numpy(np.sin(ang), dev, dt)
    cos_t = Tensor.from_numpy(np.cos(ang), dev, dt)
    ops.rope(xt, xt, Tensor.from_numpy(pos.astype(np.int32), dev, "i32"), sin_t, cos_t, RoPEAlgo.GPT_NEOX)
    sn, cs = np.sin(ang)[pos][:, None], np.cos(ang)[pos][:, None]
    sn, cs = sn.astype(NP[dt]).astype(np.float64), cs.astype(NP[dt]).astype(np.float64)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    exp = np.concatenate([x1 * cs - x2 * sn, x2 * cs + x1 * sn], -1)
    rep("rope", xt.numpy().reshape(B, S, NH, D), exp.reshape(B, S, NH, D))
