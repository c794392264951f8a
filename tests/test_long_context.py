"""Any length the checkpoint allows, by default; a cache or sequence beyond what the model
holds is refused in one line where it is asked for (new_cache, forward), never an
IndexError from inside the attention (issue 33: `new_cache(1, 2100)` was accepted by a
model built for 2048, and its prefill failed in `_attention_views`)."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_fixtures.tiny import ensure
from infinilm_models import AutoLlamaModel
from infinilm_models.models.llama.kv_cache import CacheOverflowError


def test_the_default_cache_limit_is_the_checkpoints():
    m = AutoLlamaModel.from_pretrained(ensure("qwen2"), "cpu", "f32", progress=False)
    assert m.max_cache_len == m.config.max_position_embeddings == 1024
    assert m.new_cache(1).max_len == 1024
    # dynamic RoPE sets no limit: the default is 2048, and any length can be asked for
    d = AutoLlamaModel.from_pretrained(ensure("dynamic"), "cpu", "f32", progress=False)
    assert d.config.position_limit is None and d.max_cache_len == 2048
    assert AutoLlamaModel.from_pretrained(ensure("dynamic"), "cpu", "f32", progress=False,
                                          max_cache_len=3000).max_cache_len == 3000


def test_a_cache_beyond_the_model_is_refused_in_one_line():
    m = AutoLlamaModel.from_pretrained(ensure("dynamic"), "cpu", "f32", progress=False)
    with pytest.raises(CacheOverflowError) as info:
        m.new_cache(1, 2100)
    message = str(info.value)
    assert "\n" not in message and "2100" in message and "2048" in message
    with pytest.raises(ValueError, match="exceeds max_cache_len 2048"):
        m.forward(np.zeros((1, 2049), dtype=np.int64))


def test_buffers_follow_the_cache_past_2048_positions():
    """A prefill of 2,100 tokens and cached steps after it on a model that allows them:
    the scores buffer grows with the cache (it once had the model's default length)."""
    m = AutoLlamaModel.from_pretrained(ensure("dynamic"), "cpu", "f32", progress=False,
                                       max_cache_len=2200)
    ids = np.random.default_rng(0).integers(3, m.config.vocab_size, (1, 2104))
    cache = m.new_cache(1, 2200)
    first = m.forward(ids[:, :2100], cache=cache).numpy()
    steps = [m.forward(ids[:, i:i + 1], cache=cache).numpy() for i in range(2100, 2104)]
    assert np.isfinite(first).all() and all(np.isfinite(s).all() for s in steps)
    assert cache.length == 2104
    # the prefill's scores were grown to its 2,100 keys (agreement with transformers at
    # this length is the conformance check's: test_model_long_context)
    assert m.buffers.get(1, 2100).scores.shape[2] >= 2100


def test_each_span_of_the_fixed_step_attends_over_contiguous_scores():
    """The fixed step's span grows with the cache (64, 128, ...; the whole allocation at
    most), and at every span its scores, masks and probabilities are contiguous: the layout
    the whole-allocation step had. Narrowed views of the allocation-wide buffer (rows of
    max_len + 1, not 32-byte aligned) crashed every graph check on 0.1.0's NVIDIA build,
    whose rearrange dies on such rows."""
    m = AutoLlamaModel.from_pretrained(ensure("gqa"), "cpu", "f32", progress=False)
    ids = np.random.default_rng(1).integers(3, m.config.vocab_size, (1, 70))
    cache = m.new_cache(1, 170)
    m.forward(ids[:, :60], cache=cache)
    decoder = m.fixed_decoder(cache, graph=False)
    spans = []
    for i in range(60, 70):
        decoder.step(ids[:, i])
        fixed = decoder.fixed
        spans.append(decoder.last_span)
        assert fixed.scores.shape[2] == decoder.last_span and fixed.scores.is_contiguous()
        assert fixed.probs.is_contiguous()
        assert all(t.is_contiguous() and t.shape == fixed.scores.shape
                   for t in fixed.masks.values())
    assert spans[0] == 64 and spans[-1] == 128
    assert decoder.span(cache.max_len) == cache.max_len + 1  # the whole allocation at most
