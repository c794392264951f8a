"""paged_caching's cases, prepared: slot mappings over shuffled block tables, the device
arguments, the float64 pools after the copy and the rows it must write (the contract: the
check's docstring, conformance/ops/test_op_paged_caching.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from infinilm_models.runtime import ops

from ..common import host, rng_for, to_device
from ..paged_layout import Layout, make_layout
from ..shapes import DECODE_POS, HEAD_DIM, HEADS, KV_HEADS, LONG_KEYS, PREFILL

# name: kv_heads, head_dim, block_size, past (tokens each sequence already holds), new
#   (tokens each appends now, flattened in sequence order), pad (padding tokens, slot -1,
#   after the real ones and one in the middle), layout: "contiguous" or "kv_from_qkv"
#   (k and v are slices of one fused [tokens, q + k + v heads, d] projection buffer).
CASES = {
    "smollm2_prefill": dict(kv_heads=KV_HEADS, head_dim=HEAD_DIM, block_size=16,
                            past=(0,), new=(PREFILL,), pad=0, layout="contiguous"),
    "smollm2_decode_batch4": dict(kv_heads=KV_HEADS, head_dim=HEAD_DIM, block_size=16,
                                  past=(0, 16, PREFILL - 1, DECODE_POS), new=(1, 1, 1, 1),
                                  pad=0, layout="contiguous"),
    "smollm2_mixed_batch4": dict(kv_heads=KV_HEADS, head_dim=HEAD_DIM, block_size=16,
                                 past=(0, 5, 16, 30), new=(7, 1, 3, 16), pad=0,
                                 layout="contiguous"),
    "smollm2_kv_from_qkv": dict(kv_heads=KV_HEADS, head_dim=HEAD_DIM, block_size=16,
                                past=(0, 20), new=(PREFILL, 1), pad=0, layout="kv_from_qkv"),
    "smollm2_padding_slots": dict(kv_heads=KV_HEADS, head_dim=HEAD_DIM, block_size=16,
                                  past=(3, 0), new=(2, 5), pad=3, layout="contiguous"),
    "block256": dict(kv_heads=KV_HEADS, head_dim=HEAD_DIM, block_size=256, past=(250,),
                     new=(40,), pad=0, layout="contiguous"),
    "tiny": dict(kv_heads=1, head_dim=16, block_size=4, past=(0, 2), new=(3, 6), pad=0,
                 layout="contiguous"),
    # decode appends past several hundred and a few thousand cached positions
    "smollm2_decode_long": dict(kv_heads=KV_HEADS, head_dim=HEAD_DIM, block_size=16,
                                past=LONG_KEYS, new=(1, 1), pad=0, layout="contiguous"),
}


def slot_mapping(layout: Layout, past, new, pad: int) -> np.ndarray:
    """Slots of the new tokens, sequence by sequence; `pad` padding slots (-1): one in the
    middle of the batch when there are at least two, the rest at the end."""
    slots = [layout.slot(s, t) for s, (p, n) in enumerate(zip(past, new))
             for t in range(p, p + n)]
    if pad:
        mid = len(slots) // 2
        slots = slots[:mid] + [-1] * (1 if pad > 1 else 0) + slots[mid:]
        slots += [-1] * (pad - (1 if pad > 1 else 0))
    return np.array(slots, dtype=np.int64)


def reference(k_cache: np.ndarray, v_cache: np.ndarray, k: np.ndarray, v: np.ndarray,
              slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pools after the copy, and the [num_blocks, block_size] mask of rows written."""
    kc, vc = k_cache.copy(), v_cache.copy()
    bs = kc.shape[2]
    written = np.zeros((kc.shape[0], bs), dtype=bool)
    for i, slot in enumerate(int(x) for x in slots):
        if slot < 0:
            continue
        b, r = divmod(slot, bs)
        kc[b, :, r, :] = k[i]
        vc[b, :, r, :] = v[i]
        written[b, r] = True
    return kc, vc, written


@dataclass
class Prepared:
    args: tuple  # (k_cache, v_cache, k, v, slot_mapping) as passed to ops.paged_caching
    layout: Layout
    before: dict  # name -> host pool before the call
    expected: dict  # name -> expected pool (float64)
    written: np.ndarray  # [num_blocks, block_size] rows the op must write
    host: dict

    def call(self) -> None:
        ops.paged_caching(*self.args)


def prepare(case: str, dtype: str, device) -> Prepared:
    c = CASES[case]
    rng = rng_for("paged_caching", case, dtype)
    h, d, bs = c["kv_heads"], c["head_dim"], c["block_size"]
    lens = [p + n for p, n in zip(c["past"], c["new"])]
    layout = make_layout(rng, lens, bs)
    slots = slot_mapping(layout, c["past"], c["new"], c["pad"])
    ntok = slots.size
    k, v = host((ntok, h, d), dtype, rng), host((ntok, h, d), dtype, rng)
    kc0 = host((layout.num_blocks, h, bs, d), dtype, rng)
    vc0 = host((layout.num_blocks, h, bs, d), dtype, rng)
    ekc, evc, written = reference(kc0, vc0, k, v, slots)
    if c["layout"] == "kv_from_qkv":
        fused = host((ntok, HEADS + 2 * h, d), dtype, rng)
        fused[:, HEADS:HEADS + h], fused[:, HEADS + h:] = k, v
        buf = to_device(fused, device, dtype)
        kt, vt = buf.narrow(1, HEADS, h), buf.narrow(1, HEADS + h, h)
    else:
        kt, vt = to_device(k, device, dtype), to_device(v, device, dtype)
    args = (to_device(kc0, device, dtype), to_device(vc0, device, dtype), kt, vt,
            to_device(slots, device, "i64"))
    return Prepared(args, layout, {"k_cache": kc0, "v_cache": vc0},
                    {"k_cache": ekc, "v_cache": evc}, written,
                    {"k": k, "v": v, "slot_mapping": slots})
