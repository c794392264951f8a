"""Issue 30, item 4: a KV cache made by another model (layers, KV heads, head_dim), in
another dtype or on another device is refused by `forward`, `prepare_decode` and the fixed
decoder in one line, before any InfiniCore call, and the cache is left bit-identical.

Before: another model's cache failed deep inside InfiniCore or Python (an IndexError at
the layer the cache lacks) after earlier layers had written their K/V into it; a cache
claiming another device was used as if it were the model's.
"""

from __future__ import annotations

import numpy as np
import pytest

from conformance.model.harness import resolve_model
from infinilm_models import AutoLlamaModel
from infinilm_models.runtime import Device
from infinilm_models.runtime.ops._base import CachedOp

IDS = [[5, 17, 42, 99]]


@pytest.fixture(scope="module")
def gqa():
    return AutoLlamaModel.from_pretrained(resolve_model("tiny-gqa"), "cpu", "f32",
                                          progress=False)


def _load(name: str, dtype: str = "f32", **layout):
    return AutoLlamaModel.from_pretrained(resolve_model(name), "cpu", dtype, progress=False,
                                          **layout)


def _state(cache) -> dict:
    return {"length": cache.length, "positions": cache.positions.copy(),
            "padding": cache.padding.copy(), "masked": cache.masked,
            "k": cache.k_all.numpy().copy(), "v": cache.v_all.numpy().copy()}


def _assert_unchanged(before: dict, cache) -> None:
    after = _state(cache)
    for key, value in before.items():
        assert np.array_equal(value, after[key]), key  # bit for bit: integer state, copies


def _ops_called():
    """The InfiniCore ops called while the block runs (the hook coverage uses)."""
    seen: list[str] = []

    def hook(op, *_args) -> None:
        seen.append(op.name)

    CachedOp.hooks = CachedOp.hooks + (hook,)
    return seen, hook


def _foreign_caches():
    """(id, a cache holding a prefill, the words the refusal must say)."""
    tied = _load("tiny-tied")  # 2 layers, 2 KV heads, head_dim 8
    odd = _load("tiny-odd")  # 3 layers, 1 KV head, head_dim 24
    half = _load("tiny-gqa", "f16")
    out = []
    for name, model, words in (
            ("layers", tied, ["layers 2 (the model's: 3)"]),
            ("heads_head_dim", odd, ["KV heads 1 (the model's: 2)",
                                     "head_dim 24 (the model's: 8)"]),
            ("dtype", half, ["dtype f16 (the model's: f32)"])):
        cache = model.new_cache(1, 16)
        model.forward(IDS, cache=cache)
        out.append((name, cache, words))
    return out


@pytest.fixture(scope="module")
def foreign():
    return _foreign_caches()


@pytest.mark.parametrize("entry", ["forward", "prepare_decode", "fixed_decoder"])
@pytest.mark.parametrize("which", [0, 1, 2], ids=["layers", "heads_head_dim", "dtype"])
def test_another_models_cache_is_refused_before_any_call(gqa, foreign, entry: str,
                                                         which: int) -> None:
    _, cache, words = foreign[which]
    before = _state(cache)
    call = {"forward": lambda: gqa.forward(IDS, cache=cache),
            "prepare_decode": lambda: gqa.prepare_decode(cache, 4),
            "fixed_decoder": lambda: gqa.fixed_decoder(cache, graph=False)}[entry]
    seen, hook = _ops_called()
    try:
        with pytest.raises(ValueError) as info:
            call()
    finally:
        CachedOp.hooks = tuple(h for h in CachedOp.hooks if h is not hook)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("cache does not fit this model: "), msg
    for part in words + ["new_cache()"]:
        assert part in msg, (part, msg)
    assert seen == []  # refused before any InfiniCore op
    _assert_unchanged(before, cache)


def test_a_cache_on_another_device_is_refused(gqa) -> None:
    # Only the CPU is here: a cache of this model whose device says otherwise.
    cache = gqa.new_cache(1, 16)
    gqa.forward(IDS, cache=cache)
    before = _state(cache)
    cache.device = Device("nvidia")
    with pytest.raises(ValueError, match=r"^cache does not fit this model: device nvidia:0 "
                                         r"\(the model's: cpu:0\)"):
        gqa.forward(IDS, cache=cache)
    cache.device = gqa.device
    _assert_unchanged(before, cache)


def test_not_a_cache_is_a_type_error(gqa) -> None:
    with pytest.raises(TypeError, match=r"cache must be a KVCache .* got dict"):
        gqa.forward(IDS, cache={})


def test_parallel_model_refuses_a_foreign_cache(gqa) -> None:
    tp = _load("tiny-gqa", tp=2)
    half = _load("tiny-gqa", "f16", tp=2)
    try:
        with pytest.raises(TypeError, match=r"a ParallelCache of 2 ranks\), got KVCache"):
            tp.forward(IDS, cache=gqa.new_cache(1, 16))
        cache = half.new_cache(1, 16)
        half.forward(IDS, cache=cache)
        before = [_state(c) for c in cache.caches]
        for call in (lambda: tp.forward(IDS, cache=cache),
                     lambda: tp.prepare_decode(cache, 4)):
            with pytest.raises(ValueError, match=r"^rank 0: cache does not fit this model: "
                                                 r"dtype f16 \(the model's: f32\)"):
                call()
        for state, c in zip(before, cache.caches):
            _assert_unchanged(state, c)
        # its own cache still works after the refusals
        assert tp.forward(IDS, cache=tp.new_cache(1, 16)).shape == (1, 1, 320)
    finally:
        tp.close()
        half.close()
