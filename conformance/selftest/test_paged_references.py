"""The KV-cache op checks without a GPU (their ops exist on NVIDIA-class backends only).

* Each float64 reference of the block-table layout is checked against a plain dense
  computation: the paged cache gathered back into a dense [seq, heads, dim] by explicit
  slot arithmetic, then torch's own scaled_dot_product_attention (float64).
* Each case's arguments, as the check hands them to the op wrapper, are captured before
  any InfiniCore call and held against the argument contract read from upstream
  InfiniCore's descriptor validation (info.h) and its NVIDIA kernels (what they assume
  without checking: packed heads, contiguous index tensors, one index dtype), and the
  index/data tensors on the device are read back and compared with the host arrays the
  reference used.
* The spec rows are compared with upstream's headers where a build's include/ is at hand.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

# torch is the suite's own dependency (the reference side): without it this module is a
# collection error, a counted `error` check, never a skip outside the record.
import torch

from conformance.ops.common import host, rng_for
from conformance.ops.paged_layout import STALE_SCALE, alibi_slopes, make_layout, pools
from conformance.ops.references import kv_caching as kvc
from conformance.ops.references import paged_attention as pa
from conformance.ops.references import paged_attention_prefill as pap
from conformance.ops.references import paged_caching as pc
from infinilm_models.runtime import DType, Tensor
from infinilm_models.runtime.ops._base import CachedOp
from infinilm_models.runtime.ops.specs import spec

F = torch.nn.functional
DTYPES = ("f32", "f16", "bf16")


# -- dense side --------------------------------------------------------------------------


def dense_tokens(pool: np.ndarray, table: np.ndarray, block_size: int, n: int) -> np.ndarray:
    """Tokens 0..n-1 of one sequence, by slot arithmetic one token at a time."""
    rows = []
    for t in range(n):
        slot = int(table[t // block_size]) * block_size + t % block_size
        rows.append(pool[slot // block_size, :, slot % block_size, :])
    return np.concatenate([r[None] for r in rows]) if n else np.empty((0, *pool.shape[1::2]))


def torch_attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, history: int,
                    scale: float, alibi: np.ndarray | None) -> np.ndarray:
    """q [n, H, d] at positions history..history+n-1 over keys/values [L, KV, d]."""
    n, heads = q.shape[:2]
    group = heads // keys.shape[1]
    qt = torch.from_numpy(q).permute(1, 0, 2)[None]  # [1, H, n, d]
    kt = torch.from_numpy(keys).repeat_interleave(group, dim=1).permute(1, 0, 2)[None]
    vt = torch.from_numpy(values).repeat_interleave(group, dim=1).permute(1, 0, 2)[None]
    qpos = torch.arange(history, history + n, dtype=torch.float64)[:, None]
    kpos = torch.arange(keys.shape[0], dtype=torch.float64)[None, :]
    bias = torch.zeros((heads, n, keys.shape[0]), dtype=torch.float64)
    bias = bias.masked_fill((kpos > qpos)[None], float("-inf"))
    if alibi is not None:
        bias = bias + torch.from_numpy(alibi)[:, None, None] * (kpos - qpos)[None]
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias[None], scale=scale)
    return out[0].permute(1, 0, 2).numpy()


# -- the references against the dense side ------------------------------------------------


@pytest.mark.parametrize("case", list(pa.CASES))
def test_paged_attention_reference_is_dense_attention(case):
    c = pa.CASES[case]
    p = pa.prepare(case, "f32", "cpu")
    bt, bs = p.layout.block_tables, c["block_size"]
    for s, n in enumerate(c["lens"]):
        keys = dense_tokens(p.host["k_cache"], bt[s], bs, n)
        vals = dense_tokens(p.host["v_cache"], bt[s], bs, n)
        want = torch_attention(p.host["q"][s][None], keys, vals, n - 1, pa.SCALE,
                               p.host["alibi_slopes"])[0]
        np.testing.assert_allclose(p.expected[s], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", list(pap.CASES))
def test_paged_attention_prefill_reference_is_dense_causal_attention(case):
    c = pap.CASES[case]
    p = pap.prepare(case, "f32", "cpu")
    bt, bs, cum = p.layout.block_tables, c["block_size"], p.host["cum_seq_lens_q"]
    for s, (n_q, hist) in enumerate(zip(c["q_lens"], c["history"])):
        n = n_q + hist
        keys = dense_tokens(p.host["k_cache"], bt[s], bs, n)
        vals = dense_tokens(p.host["v_cache"], bt[s], bs, n)
        want = torch_attention(p.host["q"][cum[s]:cum[s + 1]], keys, vals, hist, pap.SCALE,
                               p.host["alibi_slopes"])
        np.testing.assert_allclose(p.expected[cum[s]:cum[s + 1]], want, rtol=1e-12,
                                   atol=1e-12)


def test_prefill_without_history_is_torch_is_causal():
    rng = rng_for("selftest-paged", "is_causal")
    layout = make_layout(rng, [21], 4)
    kc, vc = pools(rng, layout, 3, 64, "f32")
    q = host((21, 9, 64), "f32", rng)
    got = pap.reference(q, kc, vc, layout.block_tables, np.array([21]), np.array([0, 21]),
                        0.125)
    keys = dense_tokens(kc, layout.block_tables[0], 4, 21)
    vals = dense_tokens(vc, layout.block_tables[0], 4, 21)
    want = F.scaled_dot_product_attention(
        torch.from_numpy(q).permute(1, 0, 2),
        torch.from_numpy(keys).repeat_interleave(3, 1).permute(1, 0, 2),
        torch.from_numpy(vals).repeat_interleave(3, 1).permute(1, 0, 2),
        is_causal=True, scale=0.125).permute(1, 0, 2).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alibi", [False, True])
def test_prefill_of_one_token_per_sequence_is_decode(alibi):
    rng = rng_for("selftest-paged", "prefill-is-decode", alibi)
    lens = np.array([1, 16, 17, 40])
    layout = make_layout(rng, lens, 16)
    kc, vc = pools(rng, layout, 3, 64, "f32")
    q = host((4, 9, 64), "f32", rng)
    slopes = alibi_slopes(9) if alibi else None
    dec = pa.reference(q, kc, vc, layout.block_tables, lens, 0.125, slopes)
    pre = pap.reference(q, kc, vc, layout.block_tables, lens, np.arange(5), 0.125, slopes)
    np.testing.assert_allclose(pre, dec, rtol=1e-13, atol=1e-13)


def test_attention_references_read_no_stale_row():
    """Stale rows (no sequence owns them) changed to anything: the references must not
    move, so the cases' stale values are a trap for the op only."""
    for mod, case in ((pa, "smollm2_batch4"), (pap, "smollm2_varlen_batch3")):
        p = mod.prepare(case, "f32", "cpu")
        live = p.layout.live()
        kc, vc = p.host["k_cache"].copy(), p.host["v_cache"].copy()
        kc.transpose(0, 2, 1, 3)[~live] = 1e6
        vc.transpose(0, 2, 1, 3)[~live] = -1e6
        args = [p.host["q"], kc, vc, p.layout.block_tables, p.host["seq_lens"]]
        if mod is pap:
            args.append(p.host["cum_seq_lens_q"])
        got = mod.reference(*args, mod.SCALE, p.host["alibi_slopes"])
        np.testing.assert_array_equal(got, p.expected)


@pytest.mark.parametrize("case", list(kvc.CASES))
def test_kv_caching_reference_is_elementwise_append(case):
    p = kvc.prepare(case, "f32", "cpu")
    h = p.host
    kc, vc, written = kvc.reference(h["k_cache"], h["v_cache"], h["k"], h["v"], h["past"])
    b, heads, seq, d = h["k"].shape
    want_k, want_v = h["k_cache"].copy(), h["v_cache"].copy()
    for bi in range(b):
        for hi in range(heads):
            for i in range(seq):
                for di in range(d):
                    want_k[bi, hi, int(h["past"][bi]) + i, di] = h["k"][bi, hi, i, di]
                    want_v[bi, hi, int(h["past"][bi]) + i, di] = h["v"][bi, hi, i, di]
    np.testing.assert_array_equal(kc, want_k)
    np.testing.assert_array_equal(vc, want_v)
    changed = (want_k != h["k_cache"]).any(axis=(1, 3))
    assert not (changed & ~written).any()
    assert written.sum() == b * seq


@pytest.mark.parametrize("case", list(pc.CASES))
def test_paged_caching_reference_fills_each_sequence(case):
    """After the copy, each sequence gathered back through its block table holds its old
    tokens from the old pool and its new tokens from k/v; every other row is the old one."""
    c = pc.CASES[case]
    p = pc.prepare(case, "f32", "cpu")
    h, bs, bt = p.host, c["block_size"], p.layout.block_tables
    real = np.flatnonzero(h["slot_mapping"] >= 0)
    assert real.size == sum(c["new"]) and h["slot_mapping"].size == real.size + c["pad"]
    at = 0
    for name, src in (("k_cache", h["k"]), ("v_cache", h["v"])):
        at = 0
        for s, (past, new) in enumerate(zip(c["past"], c["new"])):
            got = dense_tokens(p.expected[name], bt[s], bs, past + new)
            old = dense_tokens(p.before[name], bt[s], bs, past)
            np.testing.assert_array_equal(got[:past], old)
            np.testing.assert_array_equal(got[past:], src[real[at:at + new]])
            at += new
    assert p.written.sum() == real.size
    for name in ("k_cache", "v_cache"):
        same = (p.expected[name] == p.before[name]).all(axis=(1, 3))
        assert same[~p.written].all()


# -- the layouts are the hard ones they claim to be ----------------------------------------


@pytest.mark.parametrize("mod", [pc, pa, pap], ids=["paged_caching", "paged_attention",
                                                     "paged_attention_prefill"])
def test_layouts_are_shuffled_disjoint_and_padded(mod):
    partial = 0
    for case in mod.CASES:
        lay = mod.prepare(case, "f16", "cpu").layout
        used = [lay.blocks_of(s) for s in range(lay.num_seqs)]
        flat = np.concatenate(used)
        assert len(set(flat.tolist())) == flat.size, (case, "a block shared")
        assert lay.spare not in set(flat.tolist())
        assert (flat >= 0).all() and (flat < lay.num_blocks).all()
        assert not (np.diff(flat) == 1).all(), (case, "identity-like table")
        for s, blocks in enumerate(used):
            assert (lay.block_tables[s, blocks.size:] == lay.spare).all()
            partial += lay.lens[s] % lay.block_size != 0
        assert lay.block_tables.shape[1] > max(b.size for b in used)
    assert partial >= 2  # partly filled last blocks are covered


def test_stale_rows_are_larger():
    for case in pa.CASES:
        p = pa.prepare(case, "f32", "cpu")
        live = p.layout.live()
        if (~live).any():
            stale = p.host["k_cache"].transpose(0, 2, 1, 3)[~live]
            fresh = p.host["k_cache"].transpose(0, 2, 1, 3)[live]
            assert stale.std() > 0.6 * STALE_SCALE * fresh.std()


# -- the argument contract (upstream 2cec6ce6: info.h + the NVIDIA kernels) -----------------

FLOATS = {DType.F16, DType.BF16, DType.F32}
HALVES = {DType.F16, DType.BF16}
INDEX = {DType.I32, DType.I64}  # upstream also takes U32 for paged attention
HEAD_SIZES = {64, 128, 192, 256, 576}


def contiguous(t: Tensor) -> bool:
    return t.is_contiguous()


def contract_kv_caching(k_cache, v_cache, k, v, past) -> None:
    assert k_cache.dtype in FLOATS
    assert v_cache.dtype == k.dtype == v.dtype == k_cache.dtype  # one Tdata in the kernel
    assert past.dtype in INDEX
    assert k_cache.ndim == v_cache.ndim == k.ndim == v.ndim == 4
    assert k_cache.shape == v_cache.shape and k.shape == v.shape
    b, h, n, d = k_cache.shape
    # info.h joins these with ||; the kernel needs all of them
    assert (k.shape[0], k.shape[1], k.shape[3]) == (b, h, d)
    assert past.ndim == 1 and past.shape == (b,) and contiguous(past)  # read as past[b]
    vals = past.numpy().astype(np.int64)
    assert (vals >= 0).all() and (vals + k.shape[2] <= n).all()


def contract_paged_caching(k_cache, v_cache, k, v, slot_mapping) -> None:
    dt = k.dtype
    assert dt in FLOATS and v.dtype == k_cache.dtype == v_cache.dtype == dt
    assert slot_mapping.dtype == DType.I64
    assert k.ndim == v.ndim == 3 and k_cache.ndim >= 4 and v_cache.ndim >= 4
    assert slot_mapping.ndim == 1 and contiguous(slot_mapping)
    ntok, h, d = k.shape
    assert slot_mapping.shape[0] == ntok == v.shape[0] and v.shape[1] == h
    assert k_cache.shape[1] == h and k_cache.shape[3] == d
    assert v_cache.shape[:3] == k_cache.shape[:3] and v_cache.shape[3] == v.shape[2]
    # the kernel walks a token's heads as token * stride(0) + head * head_size + i
    for src in (k, v):
        assert src.strides[1] == src.shape[2] and src.strides[2] == 1
    for cache in (k_cache, v_cache):
        assert cache.strides[3] == 1
    slots = slot_mapping.numpy()
    real = slots[slots >= 0]
    assert (real < k_cache.shape[0] * k_cache.shape[2]).all()
    assert len(set(real.tolist())) == real.size  # two tokens in one slot: a race
    assert ntok <= 65535  # gridDim.y


def _attention_common(out, q, k_cache, v_cache, alibi) -> tuple[int, int, int]:
    assert q.dtype in HALVES and out.dtype == k_cache.dtype == v_cache.dtype == q.dtype
    assert q.ndim == out.ndim == 3 and k_cache.ndim == v_cache.ndim == 4
    assert q.strides[2] == 1 and out.strides[2] == 1
    assert k_cache.strides[3] == 1 and v_cache.strides[3] == 1
    _, heads, d = q.shape
    kv = k_cache.shape[1]
    assert d in HEAD_SIZES and heads % kv == 0 and k_cache.shape[3] == d
    assert v_cache.shape[:3] == k_cache.shape[:3] and v_cache.shape[3] == d  # not MLA
    assert out.shape == (q.shape[0], heads, d)
    # half2 / bfloat162 loads: even element strides keep 4-byte alignment
    for t in (q, k_cache, v_cache):
        assert all(s % 2 == 0 for s in t.strides[:-1])
    if alibi is not None:
        assert alibi.dtype == DType.F32 and alibi.ndim == 1 and alibi.strides == (1,)
        assert alibi.shape == (heads,)  # read as alibi[head]
    return heads, kv, d


def _block_tables(block_tables, lens, k_cache) -> None:
    bs, nb = k_cache.shape[2], k_cache.shape[0]
    table = block_tables.numpy().astype(np.int64)
    assert (lens >= 1).all()  # a 0 length leaves its output rows unwritten
    assert (lens <= block_tables.shape[1] * bs).all()
    for s, n in enumerate(lens):
        used = table[s, : -(-int(n) // bs)]
        assert ((used >= 0) & (used < nb)).all()


def contract_paged_attention(out, q, k_cache, v_cache, block_tables, seq_lens, alibi,
                             scale) -> None:
    heads, _, d = _attention_common(out, q, k_cache, v_cache, alibi)
    assert block_tables.ndim == 2 and seq_lens.ndim == 1
    assert block_tables.dtype in INDEX and seq_lens.dtype == block_tables.dtype
    assert block_tables.strides[1] == 1 and seq_lens.strides == (1,)
    # the decode kernels step tables by shape[1] and heads by head_size (not the strides)
    assert block_tables.strides[0] == block_tables.shape[1]
    assert q.strides[1] == d and out.strides[1] == d
    assert seq_lens.shape == (q.shape[0],) and block_tables.shape[0] == q.shape[0]
    _block_tables(block_tables, seq_lens.numpy().astype(np.int64), k_cache)
    assert scale == pytest.approx(d ** -0.5)


def contract_paged_attention_prefill(out, q, k_cache, v_cache, block_tables, seq_lens,
                                     cum, alibi, scale) -> None:
    heads, _, d = _attention_common(out, q, k_cache, v_cache, alibi)
    assert block_tables.ndim == 2 and seq_lens.ndim == 1 and cum.ndim == 1
    # each is checked alone by info.h, but the kernels read all three as block_tables'
    assert block_tables.dtype in INDEX and seq_lens.dtype == cum.dtype == block_tables.dtype
    assert block_tables.strides[1] == 1
    assert seq_lens.strides == (1,) and cum.strides == (1,)  # read as [seq] / [seq + 1]
    n = seq_lens.shape[0]
    assert cum.shape == (n + 1,) and block_tables.shape[0] == n
    c = cum.numpy().astype(np.int64)
    lens = seq_lens.numpy().astype(np.int64)
    assert c[0] == 0 and c[-1] == q.shape[0] and (np.diff(c) >= 1).all()
    assert (lens >= np.diff(c)).all()  # the KV length includes the new tokens
    _block_tables(block_tables, lens, k_cache)
    assert scale == pytest.approx(d ** -0.5)


class _Captured(Exception):
    def __init__(self, op, tensors, compute_args, create_params):
        super().__init__(op.name)
        self.op, self.tensors = op, list(tensors)
        self.compute_args, self.create_params = compute_args, create_params


def capture(call) -> _Captured:
    """The wrapper's call to CachedOp, stopped before anything reaches InfiniCore."""
    def hook(op, tensors, compute_args, create_params):
        raise _Captured(op, tensors, compute_args, create_params)

    saved = CachedOp.hooks
    CachedOp.hooks = (hook,)
    try:
        call()
    except _Captured as c:
        return c
    finally:
        CachedOp.hooks = saved
    raise AssertionError("the wrapper made no op call")


def roundtrip(t: Tensor, want: np.ndarray, dtype: str | None = None) -> None:
    got = t.numpy()
    if dtype is not None:
        assert t.dtype == DType.parse(dtype)
    np.testing.assert_array_equal(got.astype(np.float64) if got.dtype.kind == "f" else got,
                                  want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(kvc.CASES))
def test_kv_caching_arguments(case, dtype):
    p = kvc.prepare(case, dtype, "cpu")
    c = capture(p.call)
    assert c.op.name == "KVCaching" and not c.create_params and not c.compute_args
    assert c.tensors == list(p.args)
    contract_kv_caching(*c.tensors)
    k_cache, v_cache, k, v, past = c.tensors
    assert past.dtype == DType.parse(kvc.CASES[case]["index"])
    roundtrip(past, p.host["past"])
    roundtrip(k, p.host["k"], dtype)
    roundtrip(v, p.host["v"], dtype)
    roundtrip(k_cache, p.host["k_cache"], dtype)
    roundtrip(v_cache, p.host["v_cache"], dtype)
    if kvc.CASES[case]["layout"] == "k_from_projection":
        assert k.strides[1] == k.shape[3] and k.strides[2] == k.shape[1] * k.shape[3]
    if kvc.CASES[case]["layout"] == "narrowed_cache":
        assert not k_cache.is_contiguous() and k_cache.offset > 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(pc.CASES))
def test_paged_caching_arguments(case, dtype):
    p = pc.prepare(case, dtype, "cpu")
    c = capture(p.call)
    assert c.op.name == "PagedCaching" and not c.create_params and not c.compute_args
    assert c.tensors == list(p.args)
    contract_paged_caching(*c.tensors)
    k_cache, v_cache, k, v, slots = c.tensors
    roundtrip(slots, p.host["slot_mapping"])
    roundtrip(k, p.host["k"], dtype)
    roundtrip(v, p.host["v"], dtype)
    roundtrip(k_cache, p.before["k_cache"], dtype)
    roundtrip(v_cache, p.before["v_cache"], dtype)
    if pc.CASES[case]["layout"] == "kv_from_qkv":
        assert not k.is_contiguous() and k.strides[0] > k.shape[1] * k.shape[2]
    if pc.CASES[case]["pad"]:
        assert (p.host["slot_mapping"] < 0).sum() == pc.CASES[case]["pad"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(pa.CASES))
def test_paged_attention_arguments(case, dtype):
    cfg = pa.CASES[case]
    p = pa.prepare(case, dtype, "cpu")
    c = capture(p.call)
    assert c.op.name == "PagedAttention" and not c.compute_args
    assert [type(x).__name__ for x in c.create_params] == ["c_float"]
    scale = c.create_params[0].value
    out, q, k_cache, v_cache, bt, lens, alibi = c.tensors
    assert (alibi is None) == (not cfg["alibi"])
    if dtype == "f32":  # refused by upstream (BAD_TENSOR_DTYPE): unsupported, by design
        with pytest.raises(AssertionError):
            contract_paged_attention(out, q, k_cache, v_cache, bt, lens, alibi, scale)
    else:
        contract_paged_attention(out, q, k_cache, v_cache, bt, lens, alibi, scale)
    assert bt.dtype == lens.dtype == DType.parse(cfg["index"])
    roundtrip(bt, p.layout.block_tables)
    roundtrip(lens, np.array(cfg["lens"]))
    roundtrip(q, p.host["q"], dtype)
    roundtrip(k_cache, p.host["k_cache"], dtype)
    roundtrip(v_cache, p.host["v_cache"], dtype)
    if alibi is not None:
        roundtrip(alibi, p.host["alibi_slopes"], "f32")
    assert np.isnan(out.numpy().astype(np.float64)).all()
    if cfg["layout"] == "q_from_qkv":
        assert q.strides[0] == (cfg["heads"] + 2 * cfg["kv_heads"]) * q.shape[2]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(pap.CASES))
def test_paged_attention_prefill_arguments(case, dtype):
    cfg = pap.CASES[case]
    p = pap.prepare(case, dtype, "cpu")
    c = capture(p.call)
    assert c.op.name == "PagedAttentionPrefill" and not c.compute_args
    assert [type(x).__name__ for x in c.create_params] == ["c_float"]
    scale = c.create_params[0].value
    out, q, k_cache, v_cache, bt, lens, cum, alibi = c.tensors
    assert (alibi is None) == (not cfg["alibi"])
    if dtype == "f32":
        with pytest.raises(AssertionError):
            contract_paged_attention_prefill(out, q, k_cache, v_cache, bt, lens, cum, alibi,
                                             scale)
    else:
        contract_paged_attention_prefill(out, q, k_cache, v_cache, bt, lens, cum, alibi,
                                         scale)
    assert bt.dtype == lens.dtype == cum.dtype == DType.parse(cfg["index"])
    roundtrip(bt, p.layout.block_tables)
    roundtrip(lens, np.array(cfg["q_lens"]) + np.array(cfg["history"]))
    roundtrip(cum, np.concatenate([[0], np.cumsum(cfg["q_lens"])]))
    roundtrip(q, p.host["q"], dtype)
    roundtrip(k_cache, p.host["k_cache"], dtype)
    if alibi is not None:
        roundtrip(alibi, p.host["alibi_slopes"], "f32")
    assert np.isnan(out.numpy().astype(np.float64)).all()


def test_decode_cases_cover_the_model_and_the_kernel_edges():
    lens = [n for c in pa.CASES.values() for n in c["lens"]]
    assert 1 in lens and any(n > 256 for n in lens)
    assert {c["index"] for c in pa.CASES.values()} == {"i32", "i64"}
    assert any(c["alibi"] for c in pa.CASES.values())
    assert any(not c["alibi"] for c in pa.CASES.values())
    q_lens = [n for c in pap.CASES.values() for n in c["q_lens"]]
    hist = [n for c in pap.CASES.values() for n in c["history"]]
    assert 1 in q_lens and max(q_lens) > 8 and max(q_lens) + max(hist) > 128


# -- spec rows against upstream's headers ---------------------------------------------------

HEADERS = {"KVCaching": "kv_caching.h", "PagedCaching": "paged_caching.h",
           "PagedAttention": "paged_attention.h",
           "PagedAttentionPrefill": "paged_attention_prefill.h"}


def _include_dir() -> Path:
    """The headers of the build under test (tox -e upstream: the upstream snapshot)."""
    from infinilm_models.runtime.capabilities import current_build

    return current_build().root / "include"


def _params(text: str, fn: str) -> list[str]:
    m = re.search(re.escape(fn) + r"\s*\(([^)]*)\)", text)
    assert m, fn
    return [" ".join(p.split()) for p in m.group(1).split(",")]


@pytest.mark.parametrize("name", list(HEADERS))
def test_spec_rows_match_upstream_headers(name, verify):
    header = _include_dir() / "infiniop" / "ops" / HEADERS[name]
    if not header.is_file():
        verify.unsupported(RuntimeError(f"the build under test has no {header.name} "
                                        f"({header.parent}): the op is not in it"))
    text = header.read_text()
    s = spec(name)
    create = _params(text, s.create_fn)
    # handle, &desc, one descriptor per tensor (in the spec's order), then the scalars
    descs = [p for p in create[2:] if p.startswith("infiniopTensorDescriptor_t")]
    assert len(descs) == len(s.tensors)
    for p, t in zip(descs, s.tensors):
        assert p.split()[-1].removesuffix("_desc") == t, (p, t)
    scalars = create[2 + len(descs):]
    assert [p.split()[0] for p in scalars] == [{"c_float": "float"}[c.__name__]
                                               for c in s.create]
    compute = _params(text, s.compute_fn)
    assert len(compute) == 1 + 2 * s.workspace + len(s.tensors) + len(s.compute) + 1
    ptrs = [p.split()[-1].lstrip("*") for p in compute[3:3 + len(s.tensors)]]
    assert ptrs == list(s.tensors)
