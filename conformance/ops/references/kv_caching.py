"""kv_caching's cases, prepared: the device arguments in the wrapper's order, the float64
expectation of the append and the mask of what it must write (the contract: the check's
docstring, conformance/ops/test_op_kv_caching.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from infinilm_models.runtime import ops

from ..common import host, rng_for, to_device
from ..shapes import CACHE_LEN, DECODE_POS, HEAD_DIM, KV_HEADS, LONG_KEYS, PREFILL

# name: kv_heads, head_dim, max_len (cache rows), new (tokens per sequence), past (per
#   sequence: its batch size), index (dtype of past_kv_lengths), layout:
#   "contiguous"; "k_from_projection": k/v are [batch, seq, kv_heads, d] projections seen
#   through a permute (the model's layout, head stride d, token stride kv_heads * d);
#   "narrowed_cache": the caches are a max_len window of a longer cache buffer.
CASES = {
    "smollm2_prefill": dict(kv_heads=KV_HEADS, head_dim=HEAD_DIM, max_len=CACHE_LEN,
                            new=PREFILL, past=(0,), index="i64", layout="contiguous"),
    "smollm2_decode_batch4": dict(kv_heads=KV_HEADS, head_dim=HEAD_DIM, max_len=CACHE_LEN,
                                  new=1, past=(0, 17, DECODE_POS, CACHE_LEN - 1),
                                  index="i64", layout="contiguous"),
    "smollm2_chunk_batch3": dict(kv_heads=KV_HEADS, head_dim=HEAD_DIM, max_len=CACHE_LEN,
                                 new=5, past=(0, 9, 100), index="i64", layout="contiguous"),
    "smollm2_past_i32": dict(kv_heads=KV_HEADS, head_dim=HEAD_DIM, max_len=CACHE_LEN,
                             new=3, past=(4, 0, 61), index="i32", layout="contiguous"),
    "smollm2_k_from_projection": dict(kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                                      max_len=CACHE_LEN, new=PREFILL, past=(0, 30),
                                      index="i64", layout="k_from_projection"),
    "smollm2_narrowed_cache": dict(kv_heads=KV_HEADS, head_dim=HEAD_DIM, max_len=CACHE_LEN,
                                   new=2, past=(DECODE_POS, 7), index="i64",
                                   layout="narrowed_cache"),
    "tiny": dict(kv_heads=1, head_dim=16, max_len=8, new=3, past=(0, 5), index="i64",
                 layout="contiguous"),
    # decode appends past several hundred and a few thousand cached positions
    "smollm2_decode_long": dict(kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                                max_len=LONG_KEYS[-1] + 16, new=1,
                                past=(LONG_KEYS[0], LONG_KEYS[-1]), index="i64",
                                layout="contiguous"),
}
NARROW_PAD = 9  # rows of the longer cache buffer before the narrowed window


def reference(k_cache: np.ndarray, v_cache: np.ndarray, k: np.ndarray, v: np.ndarray,
              past: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The caches after the append, and the [batch, max_len] mask of rows written."""
    kc, vc = k_cache.copy(), v_cache.copy()
    written = np.zeros((kc.shape[0], kc.shape[2]), dtype=bool)
    seq = k.shape[2]
    for b, p in enumerate(int(x) for x in past):
        kc[b, :, p:p + seq] = k[b]
        vc[b, :, p:p + seq] = v[b]
        written[b, p:p + seq] = True
    return kc, vc, written


@dataclass
class Prepared:
    """A case's device arguments (in the wrapper's order), and what to compare after."""
    args: tuple  # (k_cache, v_cache, k, v, past_kv_lengths) as passed to ops.kv_caching
    buffers: dict  # name -> (whole device buffer tensor, view slice into it)
    before: dict  # name -> host copy of the whole buffer before the call
    expected: dict  # name -> expected cache view (float64)
    written: dict  # name -> mask over the whole buffer of what the op must write
    host: dict  # the host arrays the reference used

    def call(self) -> None:
        ops.kv_caching(*self.args)


def prepare(case: str, dtype: str, device) -> Prepared:
    c = CASES[case]
    rng = rng_for("kv_caching", case, dtype)
    h, d, n, s = c["kv_heads"], c["head_dim"], c["max_len"], c["new"]
    past = np.array(c["past"], dtype=np.int64)
    b = past.size
    assert int(past.max()) + s <= n, case
    k, v = host((b, h, s, d), dtype, rng), host((b, h, s, d), dtype, rng)
    kc0, vc0 = host((b, h, n, d), dtype, rng), host((b, h, n, d), dtype, rng)
    ekc, evc, rows = reference(kc0, vc0, k, v, past)

    if c["layout"] == "k_from_projection":
        kt = to_device(k.transpose(0, 2, 1, 3), device, dtype).permute(0, 2, 1, 3)
        vt = to_device(v.transpose(0, 2, 1, 3), device, dtype).permute(0, 2, 1, 3)
    else:
        kt, vt = to_device(k, device, dtype), to_device(v, device, dtype)

    buffers, before, written = {}, {}, {}
    views = []
    for name, old in (("k_cache", kc0), ("v_cache", vc0)):
        if c["layout"] == "narrowed_cache":
            full = host((b, h, n + 2 * NARROW_PAD, d), dtype, rng)
            full[:, :, NARROW_PAD:NARROW_PAD + n] = old
            sl = (slice(None), slice(None), slice(NARROW_PAD, NARROW_PAD + n))
            base = to_device(full, device, dtype)
            view = base.narrow(2, NARROW_PAD, n)
        else:
            full, sl = old, (slice(None),) * 3
            base = view = to_device(old, device, dtype)
        mask = np.zeros(full.shape, dtype=bool)
        mask[sl] = np.broadcast_to(rows[:, None, :, None], old.shape)
        buffers[name], before[name], written[name] = (base, sl), full, mask
        views.append(view)
    pt = to_device(past, device, c["index"])
    return Prepared((views[0], views[1], kt, vt, pt), buffers, before,
                    {"k_cache": ekc, "v_cache": evc}, written,
                    {"k": k, "v": v, "past": past, "k_cache": kc0, "v_cache": vc0})
