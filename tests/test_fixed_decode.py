"""The fixed-shape decode step (what a captured graph replays) against the plain decode
path, on the CPU where it runs eagerly: the extra positions it attends to get zero
probability, so the logits agree to float32 rounding and greedy tokens are identical."""

from __future__ import annotations

import numpy as np
import pytest

from conformance.judge import error_metrics
from infinilm_fixtures.tiny import ensure
from infinilm_models import AutoLlamaModel, generate

PROMPTS = {1: [[5, 17, 33, 2, 9]], 3: [[5, 17, 33, 2, 9], [1, 2, 3, 4, 5], [9, 8, 7, 6, 5]]}


@pytest.mark.parametrize("name", ["gqa", "mqa", "mha", "odd"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fixed_step_equals_plain_decode(name, batch):
    model = AutoLlamaModel.from_pretrained(ensure(name), "cpu", "f32", progress=False,
                                           max_cache_len=32)
    ids = np.array(PROMPTS[batch])
    plain, fixed = model.new_cache(batch, 20), model.new_cache(batch, 20)
    model.forward(ids, cache=plain)
    model.forward(ids, cache=fixed)
    decoder = model.fixed_decoder(fixed, graph=False)
    nxt = ids[:, -1]
    for _ in range(8):  # crosses lengths 5..13 of a 20-long cache
        a = model.forward(nxt[:, None], cache=plain).numpy().copy()
        b = decoder.step(nxt).numpy()
        assert error_metrics(b, a)["nmse"] <= 1e-12
        nxt = a.reshape(batch, -1).argmax(-1)
    assert fixed.length == plain.length


def test_generate_with_the_fixed_step_matches_plain():
    model = AutoLlamaModel.from_pretrained(ensure("gqa"), "cpu", "f32", progress=False)
    prompts = [[5, 17, 33], [9, 8, 7, 6, 5, 4, 3]]  # unequal: left padding under the mask
    a = generate(model, prompts, max_new_tokens=10, eos_token_ids=(), graph=False).tokens
    cache = model.new_cache(2, 17)
    with pytest.raises(ValueError, match="no graph API"):
        model.fixed_decoder(cache, graph=True)
    from infinilm_models.models.llama.decode_step import FixedDecoder

    real = model.fixed_decoder
    model.fixed_decoder = lambda c, graph="auto": FixedDecoder(model, c, graph=False)
    try:
        b = generate(model, prompts, max_new_tokens=10, eos_token_ids=(), graph=True).tokens
    finally:
        model.fixed_decoder = real
    np.testing.assert_array_equal(a, b)  # token ids


def test_fixed_mask_updated_in_place_equals_a_rebuilt_one():
    """The mask is built once and then updated at the position each step committed; after
    steps, a truncation and new padding it must equal one built from scratch (exact: it
    holds only 0 and the mask value)."""
    from infinilm_models.models.llama.kv_cache import KVCache

    model = AutoLlamaModel.from_pretrained(ensure("gqa"), "cpu", "bf16", progress=False)
    group = model.config.num_attention_heads // model.config.num_key_value_heads

    def fresh(cache: KVCache) -> np.ndarray:
        other = model.new_cache(cache.batch_size, cache.max_len)
        other.length, other.padding[:] = cache.length, cache.padding
        return other.fixed_mask(group).numpy()

    cache = model.new_cache(2, 12)
    model.forward(np.array([[0, 0, 5, 6], [1, 2, 3, 4]]), cache=cache,
                  attention_mask=np.array([[0, 0, 1, 1], [1, 1, 1, 1]]))
    decoder = model.fixed_decoder(cache, graph=False)
    for _ in range(4):
        decoder.step(np.array([7, 8]))
        np.testing.assert_array_equal(cache.fixed_mask(group).numpy(), fresh(cache))
    cache.truncate(5)
    np.testing.assert_array_equal(cache.fixed_mask(group).numpy(), fresh(cache))
    decoder.step(np.array([7, 8]))
    np.testing.assert_array_equal(cache.fixed_mask(group).numpy(), fresh(cache))


@pytest.mark.parametrize("in_place", [False, True], ids=["slot", "in_place"])
@pytest.mark.parametrize("window", [1, 3, 8])
def test_windowed_fixed_mask_updated_in_place_equals_a_rebuilt_one(window, in_place):
    """A sliding window's mask: each step one position leaves the window as another
    enters; updated in place it equals one built from scratch, and it masks exactly the
    positions outside the window (and padding, and beyond the length)."""
    from infinilm_models.models.llama.kv_cache import mask_value

    model = AutoLlamaModel.from_pretrained(ensure("gqa"), "cpu", "f32", progress=False)
    cache = model.new_cache(2, 16)
    model.forward(np.array([[0, 0, 5, 6], [1, 2, 3, 4]]), cache=cache,
                  attention_mask=np.array([[0, 0, 1, 1], [1, 1, 1, 1]]))
    for _ in range(9):
        got = cache.fixed_mask(4, in_place, window).numpy()
        other = model.new_cache(2, 16)
        other.length, other.padding[:] = cache.length, cache.padding
        np.testing.assert_array_equal(got, other.fixed_mask(4, in_place, window).numpy())
        query = cache.length  # the new token's position
        seen = np.zeros((2, 17), dtype=bool)
        seen[:, max(0, query - window + 1):query] = True
        seen[:, 16 if not in_place else query] = True
        seen &= ~cache.padding[:, :17]
        row = got.reshape(2, -1, 4, 17)[:, 0, 0]
        np.testing.assert_array_equal(row == 0, seen)
        assert set(np.unique(row)) <= {0.0, mask_value(cache.dtype)}
        cache.length += 1  # as a step does (what it appends does not enter the mask)
