"""Planted backends for the judge's self-tests: `pytest -p conformance.selftest.plants
--plant NAME` runs the real suite on InfiniCore with one op wrapped the way a vendor's
backend might differ from the reference build.

Each plant calls the real InfiniCore op, then changes its output through the host, exactly
as a different kernel would: the checks, the judge and the localization see nothing but
the output. Two families:

correct but different (must pass; at most findings):
  ulp_noise        1% of the elements of every floating output 1 ulp off, random sign
  gemm_jitter      f32 gemm results differ by up to 4 ulp from call to call
  host_gemm        gemm computed by numpy in float32 (another reduction order and tiling)
  subnormal_mask   causal_softmax leaves the smallest subnormal in masked positions
  gemm_bf16_ulp    10% of every bf16/f16 gemm's outputs 1 ulp off (another tiling's rounding)
  gemm_half_ulp25, gemm_half_ulp50    the same for 25% and 50% of the outputs
  gemm_half_other25, gemm_half_other50   25% / 50% of every bf16/f16 gemm's products
                   rounded the other way: the neighbour of the exact product farther from
                   it (a faithfully rounded kernel; at 100% that is model/faithful.py);
                   with beta != 0 the sum with C then rounded to nearest
defects (must fail, naming the op, and at model level the layer and sub-module):
  add_tail16       add leaves the tail of rows not a multiple of 16 unwritten (zeros)
  sampler_no_last  random_sample never returns the last index
  rms_eps100       rms_norm with 100 x epsilon
  rms_norm_scale2  rms_norm's output 2% too large (every norm of every layer)
  gemm_m1_scale    gemm output 0.2% too large when M = 1 (a decode gemv)
  rope_decode_pos0 rope ignores the position ids of one-token (decode) calls
  softmax_drop_newest  causal_softmax drops the newest key of one query row in decode
  gemm_segfault_batched  batched (3-D) gemm kills the process (SIGSEGV)
  nan_layer1_attention   layer 1's attention output holds a NaN (a kernel that overflows)
  add_rms_norm_scale     add_rms_norm's normalized output 0.2% too large (upstream builds)
  embedding_next_row     the embedding op returns the next row of the table (upstream)
  nan_rms_norm_7th       the 7th rms_norm call of a process writes a NaN (layer 3's input
                         norm in the first forward); the check that made the call is
                         appended to $INFINILM_PLANT_LOG when set
  gemm_last_row_unwritten  a 2-D gemm of two or more rows leaves the last row of its
                         output unwritten (a kernel that skips its last tile)
  noop_replay            the fixed decode step computes nothing after its first step (a
                         replay that executes no kernel)
  softmax_long_decode    causal_softmax of a one-row (decode) matrix longer than 256 keys
                         sees only its newest 256 keys (a kernel bounded by one block)
  cache_slot_past_256    the KV cache writes the tokens from position 256 on one slot early
                         (a block table off by one past its first 256-position block):
                         only a check that decodes past 256 positions can see it
"""

from __future__ import annotations

import numpy as np
import pytest

PLANTS = ("ulp_noise", "gemm_jitter", "host_gemm", "subnormal_mask", "gemm_bf16_ulp",
          "gemm_half_ulp25", "gemm_half_ulp50", "gemm_half_other25", "gemm_half_other50",
          "rms_norm_scale2",
          "add_tail16", "sampler_no_last", "rms_eps100", "gemm_m1_scale", "rope_decode_pos0",
          "softmax_drop_newest", "gemm_segfault_batched", "nan_layer1_attention",
          "add_rms_norm_scale", "embedding_next_row", "nan_rms_norm_7th",
          "gemm_last_row_unwritten", "noop_replay", "softmax_long_decode",
          "cache_slot_past_256")
CURRENT: list[str] = [""]  # the node id of the check running in this process


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--plant", choices=PLANTS, default=None,
                     help="wrap one InfiniCore op with a planted behaviour (self-tests)")


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("--plant")
    if name:
        install(name)


def pytest_runtest_setup(item: pytest.Item) -> None:
    CURRENT[0] = item.nodeid


def _log_call(what: str) -> None:
    """Which check made a planted call (the self-tests read it back)."""
    import os

    path = os.environ.get("INFINILM_PLANT_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()} {CURRENT[0]} {what}\n")


def _host(t) -> np.ndarray:
    return t.numpy().astype(np.float64)


def _store(t, values: np.ndarray) -> None:
    """Write `values` into the (possibly strided) output view `t` through a temporary."""
    from infinilm_models.runtime import Tensor
    from infinilm_models.runtime.ops import rearrange

    tmp = Tensor.from_numpy(np.ascontiguousarray(values), t.device, t.dtype)
    rearrange(t, tmp)


def _ulp_step(x: np.ndarray, dtype, sign: np.ndarray) -> np.ndarray:
    """One ulp of `dtype` up (sign > 0) or down from each element."""
    v = x.astype(dtype.numpy)
    toward = np.where(sign > 0, np.inf, -np.inf).astype(dtype.numpy)
    return np.nextafter(v, toward).astype(np.float64)


def install(name: str) -> None:
    from infinilm_models.runtime import ops

    real = {k: getattr(ops, k) for k in ("gemm", "add", "mul", "rms_norm", "rope",
                                         "causal_softmax", "swiglu", "random_sample",
                                         "add_rms_norm", "embedding")}
    rng = np.random.default_rng(1234)

    def wrap(op: str, after):
        def planted(*args, **kwargs):
            out = real[op](*args, **kwargs)
            after(*args, **kwargs)
            return out
        setattr(ops, op, planted)

    def nudge(out, fraction: float) -> None:
        """A random `fraction` of the output's elements one ulp up or down."""
        x = _host(out)
        pick = rng.random(x.shape) < fraction
        if pick.any():
            sign = rng.choice([-1.0, 1.0], size=x.shape)
            _store(out, np.where(pick, _ulp_step(x, out.dtype, sign), x))

    if name == "ulp_noise":
        def noise(out, *_, **__):
            nudge(out, 0.01)
        for op in ("gemm", "add", "mul", "rms_norm", "rope", "causal_softmax", "swiglu"):
            wrap(op, noise)
    elif name == "gemm_jitter":
        def jitter(c, *_, **__):
            if c.dtype.short == "f32":
                x = _host(c)
                sign = rng.choice([-1.0, 1.0], size=x.shape)
                for _ in range(int(rng.integers(0, 5))):
                    x = _ulp_step(x, c.dtype, sign)
                _store(c, x)
        wrap("gemm", jitter)
    elif name in ("gemm_bf16_ulp", "gemm_half_ulp25", "gemm_half_ulp50"):
        share = {"gemm_bf16_ulp": 0.10, "gemm_half_ulp25": 0.25, "gemm_half_ulp50": 0.50}[name]

        def ulp(c, *_, **__):
            if c.dtype.short in ("bf16", "f16"):
                nudge(c, share)
        wrap("gemm", ulp)
    elif name in ("gemm_half_other25", "gemm_half_other50"):
        share = 0.25 if name == "gemm_half_other25" else 0.50

        def other_way(c, a, b, alpha=1.0, beta=0.0):
            if c.dtype.short not in ("bf16", "f16"):
                return real["gemm"](c, a, b, alpha, beta)
            before = _host(c) if beta else None
            real["gemm"](c, a, b, alpha, beta)
            exact = alpha * np.matmul(_host(a), _host(b))
            # the product's nearest value: the real kernel's output where it is the product
            near = _host(c) if not beta else exact.astype(c.dtype.numpy).astype(np.float64)
            # past the exact product to the dtype's next value on its far side
            pick = (rng.random(near.shape) < share) & (near != exact)
            out = np.where(pick, _ulp_step(near, c.dtype, np.sign(exact - near)), near)
            if beta:  # the sum (ours' residual add) rounded to nearest: see model/faithful.py
                out = (beta * before + out).astype(c.dtype.numpy).astype(np.float64)
            _store(c, out)
            return c
        ops.gemm = other_way
    elif name == "host_gemm":
        def host_gemm(c, a, b, alpha=1.0, beta=0.0):
            out = alpha * np.matmul(a.numpy().astype(np.float32), b.numpy().astype(np.float32))
            if beta:
                out = out + beta * c.numpy().astype(np.float32)
            _store(c, out.astype(np.float32).astype(np.float64))
            return c
        ops.gemm = host_gemm
    elif name == "subnormal_mask":
        def subnormal(y, x, **__):
            p = _host(y)
            q, k = p.shape[-2:]
            masked = np.arange(k)[None, :] > (k - q + np.arange(q))[:, None]
            tiny = {"f32": 1.4e-45, "f16": 6e-8, "bf16": 9.2e-41}[y.dtype.short]
            _store(y, np.where(masked, tiny, p))
        wrap("causal_softmax", subnormal)
    elif name == "add_tail16":
        def tail(c, a, b):
            cols = c.shape[-1]
            if cols % 16:
                x = _host(c)
                x[..., cols - cols % 16:] = 0.0
                _store(c, x)
        wrap("add", tail)
    elif name == "sampler_no_last":
        def no_last(result, logits, *_, **__):
            if int(result.numpy()) == logits.shape[-1] - 1:
                _store(result, np.array(logits.shape[-1] - 2))
        wrap("random_sample", no_last)
    elif name == "rms_eps100":
        def eps100(y, x, w, eps):
            xs, ws = _host(x), _host(w)
            _store(y, xs / np.sqrt(np.mean(xs * xs, axis=-1, keepdims=True) + 100 * eps) * ws)
        wrap("rms_norm", eps100)
    elif name == "rms_norm_scale2":
        def scale2(y, *_, **__):
            _store(y, _host(y) * 1.02)
        wrap("rms_norm", scale2)
    elif name == "gemm_m1_scale":
        def gemm_m1(c, a, b, alpha=1.0, beta=0.0):
            if a.shape[-2] != 1:
                return real["gemm"](c, a, b, alpha, beta)
            # A kernel that scales its float32 accumulator, then rounds once.
            acc = alpha * np.matmul(a.numpy().astype(np.float32), b.numpy().astype(np.float32))
            if beta:
                acc = acc + beta * c.numpy().astype(np.float32)
            _store(c, (acc * np.float32(1.002)).astype(np.float32).astype(np.float64))
            return c
        ops.gemm = gemm_m1
    elif name == "rope_decode_pos0":
        def rope(y, x, pos_ids, sin, cos, algo=ops.RoPEAlgo.GPT_NEOX):
            if x.shape[0] <= 2:  # one token per sequence, batch <= 2: a decode step
                pos_ids = type(pos_ids).zeros(pos_ids.shape, pos_ids.dtype, pos_ids.device)
            return real["rope"](y, x, pos_ids, sin, cos, algo)
        ops.rope = rope
    elif name == "softmax_drop_newest":
        def drop(y, x):
            if y.shape[-2] == 1:  # decode: one query row per matrix
                p = _host(y)
                p.reshape(-1, p.shape[-1])[0, -1] = 0.0
                _store(y, p)
        wrap("causal_softmax", drop)
    elif name == "nan_layer1_attention":
        from infinilm_models.models.llama.attention import LlamaAttention

        forward = LlamaAttention.forward

        def nan_out(self, *args, **kwargs):
            out = forward(self, *args, **kwargs)
            if self.layer_idx == 1:
                x = _host(out)
                x.reshape(-1)[0] = np.nan
                _store(out, x)
            return out
        LlamaAttention.forward = nan_out
    elif name == "nan_rms_norm_7th":
        calls = [0]

        def nan7(y, *_, **__):
            calls[0] += 1
            if calls[0] == 7:
                x = _host(y)
                x.reshape(-1)[0] = np.nan
                _store(y, x)
                _log_call("rms_norm call 7: NaN written")
        wrap("rms_norm", nan7)
    elif name == "gemm_last_row_unwritten":
        def last_row(c, a, b, alpha=1.0, beta=0.0):
            if c.ndim != 2 or c.shape[0] < 2:
                return real["gemm"](c, a, b, alpha, beta)
            before = _host(c)[-1].copy()
            real["gemm"](c, a, b, alpha, beta)
            x = _host(c)
            x[-1] = before  # what was there before the call stays
            _store(c, x)
            return c
        ops.gemm = last_row
    elif name == "noop_replay":
        from infinilm_models.models.llama.decode_step import FixedDecoder

        device_step = FixedDecoder._device_step

        def noop(self):
            if self.steps == 0:
                return device_step(self)
            return self.bufs.logits.view(self.cache.batch_size, 1, self.model.config.vocab_size)
        FixedDecoder._device_step = noop
    elif name == "softmax_long_decode":
        def window(y, x):
            q, k = y.shape[-2:]
            if q == 1 and k > 256:  # decode over a long cache: only the newest 256 keys
                z = _host(x)
                z[..., : k - 256] = -np.inf
                z = np.exp(z - z.max(axis=-1, keepdims=True))
                _store(y, z / z.sum(axis=-1, keepdims=True))
        wrap("causal_softmax", window)
    elif name == "add_rms_norm_scale":
        def scale(y, *_, **__):
            _store(y, _host(y) * 1.002)
        wrap("add_rms_norm", scale)
    elif name == "embedding_next_row":
        def next_row(out, ids, weight):
            table = _host(weight)
            picked = np.minimum(ids.numpy().reshape(-1) + 1, table.shape[0] - 1)
            _store(out, table[picked].reshape(out.shape))
        wrap("embedding", next_row)
    elif name == "cache_slot_past_256":
        from infinilm_models.models.llama.kv_cache import KVCache

        slot = KVCache.slot

        def past_256(self, layer, start, seq):
            return slot(self, layer, start - 1 if start >= 256 else start, seq)
        KVCache.slot = past_256
    elif name == "gemm_segfault_batched":
        from infinilm_models.runtime import Tensor

        class Unmapped:  # a device buffer at an address nothing is mapped at
            def __init__(self, device) -> None:
                self.device, self.ptr, self.nbytes = device, 16, 1 << 40

        def segv(c, a, b, *args, **kwargs):
            if a.ndim == 3 or c.ndim == 3:  # the real kernel reads A from address 16
                a = Tensor(Unmapped(a.device), a.dtype, a.shape, a.strides, 0)
            return real["gemm"](c, a, b, *args, **kwargs)
        ops.gemm = segv
