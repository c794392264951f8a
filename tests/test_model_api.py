"""The model's own contracts, on a tiny fixture: KV cache bookkeeping, no allocation in the
decode loop, capture leaves numerics alone, sampling reproducible, CLI, input errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conformance.model.harness import resolve_model
from conformance.model.prompts import prompt_ids
from infinilm_models import AutoLlamaModel, GenerationConfig, generate
from infinilm_models.models.llama import CacheOverflowError, ConfigError
from infinilm_models.runtime import memory
from infinilm_models.runtime.ops import _base

MODEL = "tiny-gqa"


@pytest.fixture(scope="module")
def model():
    return AutoLlamaModel.from_pretrained(resolve_model(MODEL), "cpu", "f32", progress=False)


def test_cache_overflow_is_a_clear_error(model):
    cache = model.new_cache(1, 8)
    model.forward([[5, 6, 7, 8, 9, 10]], cache=cache)
    with pytest.raises(CacheOverflowError, match=r"6 cached \+ 3 new tokens > max_len 8"):
        model.forward([[1, 2, 3]], cache=cache)
    assert cache.length == 6  # a refused step leaves the cache as it was


def _cache_state(cache) -> dict:
    return {"length": cache.length, "positions": cache.positions.copy(),
            "padding": cache.padding.copy(), "masked": cache.masked,
            "keys": [k.numpy().copy() for k in cache.keys],
            "values": [v.numpy().copy() for v in cache.values]}


@pytest.mark.parametrize("bad", [
    {"position_ids": [[99999]]},              # out of range
    {"position_ids": [[-1]]},
    {"position_ids": [[3, 4]]},               # wrong shape
    {"attention_mask": [[1, 1]]},             # wrong shape
], ids=["pos_too_large", "pos_negative", "pos_shape", "mask_shape"])
def test_a_refused_call_leaves_the_cache_bit_identical(model, bad):
    """Validation before any state changes: a refused cached forward must not advance the
    cache's positions (every later token would be rotated at the wrong position)."""
    ids = prompt_ids(resolve_model(MODEL), 1, 8)
    cache = model.new_cache(1, 16)
    model.forward(ids[:, :6], cache=cache)
    before = _cache_state(cache)
    with pytest.raises(ValueError):
        model.forward(ids[:, 6:7], cache=cache, **bad)
    after = _cache_state(cache)
    for key in before:
        if isinstance(before[key], list):
            assert all(np.array_equal(a, b) for a, b in zip(before[key], after[key])), key
        else:
            assert np.array_equal(before[key], after[key]), key
    model.forward(ids[:, 6:7], cache=cache)  # the next real token goes where it belongs
    assert cache.length == 7 and cache.positions.tolist() == [7]


def test_truncate_then_replay_gives_the_same_logits(model):
    ids = prompt_ids(resolve_model(MODEL), 1, 9)
    cache = model.new_cache(1, 16)
    model.forward(ids[:, :8], cache=cache)
    first = model.forward(ids[:, 8:9], cache=cache).numpy().copy()
    cache.truncate(8)
    again = model.forward(ids[:, 8:9], cache=cache).numpy()
    np.testing.assert_array_equal(first, again)
    cache.reset()
    assert cache.length == 0


def test_decode_loop_allocates_nothing(model, monkeypatch):
    ids = prompt_ids(resolve_model(MODEL), 2, 6)
    cache = model.new_cache(2, 32)
    model.forward(ids, cache=cache)
    model.forward(ids[:, :1], cache=cache)  # first decode step allocates its buffers
    made = []
    original = memory.DeviceBuffer.__init__

    def counting(self, *args, **kwargs):
        made.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(memory.DeviceBuffer, "__init__", counting)
    for i in range(5):
        model.forward(ids[:, i:i + 1], cache=cache)
    assert made == []


@pytest.mark.parametrize("prepared", [True, False])
def test_generate_creates_no_descriptors_while_decoding(model, monkeypatch, prepared):
    """generate() prepares the attention's growing shapes before its loop; without that,
    each step creates three descriptors (the control case shows the count can move)."""
    for op in _base.CachedOp.instances:
        op.clear()  # no shape left over from other tests
    if not prepared:
        monkeypatch.setattr(type(model), "prepare_decode", lambda self, cache, n: None)
    seen = []
    original = type(model).forward

    def counting(self, *args, **kwargs):
        seen.append(_base.descriptors_created())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", counting)
    # No eos: the count below needs all 12 steps.
    generate(model, prompt_ids(resolve_model(MODEL), 3, 7), max_new_tokens=12,
             eos_token_ids=())
    assert len(seen) == 12  # the prefill and 11 decode steps
    # seen[2] is taken after the first decode step, which creates the single-token shapes
    # of the non-attention ops once.
    created_in_loop = seen[-1] - seen[2]
    if prepared:
        assert created_in_loop == 0
    else:
        assert created_in_loop == 3 * 9  # gemm, softmax, gemm per new cache length


def test_capture_does_not_change_numerics(model):
    ids = prompt_ids(resolve_model(MODEL), 2, 7)
    plain = model.forward(ids, all_logits=True).numpy().copy()
    got: dict = {}
    captured = model.forward(ids, all_logits=True, capture=got).numpy()
    np.testing.assert_array_equal(plain, captured)
    assert list(got)[:3] == ["embed_tokens", "layers.0.self_attn", "layers.0.residual_attn"]
    assert got["layers.2"].shape == (2, 7, model.config.hidden_size)


def test_sampling_is_reproducible_and_topk1_is_greedy(model):
    prompt = [prompt_ids(resolve_model(MODEL), 1, 5)[0].tolist()]
    cfg = dict(max_new_tokens=10, do_sample=True, temperature=1.5, top_k=20, top_p=0.9)
    a = generate(model, prompt, GenerationConfig(seed=1, **cfg)).tokens
    b = generate(model, prompt, GenerationConfig(seed=1, **cfg)).tokens
    np.testing.assert_array_equal(a, b)
    greedy = generate(model, prompt, max_new_tokens=10).tokens
    top1 = generate(model, prompt, GenerationConfig(seed=3, max_new_tokens=10, do_sample=True,
                                                    top_k=1)).tokens
    np.testing.assert_array_equal(greedy, top1)


def test_eos_stops_generation(model):
    prompt = [prompt_ids(resolve_model(MODEL), 1, 5)[0].tolist()]
    free = generate(model, prompt, max_new_tokens=8, eos_token_ids=()).tokens[0]
    stop = int(free[2])
    out = generate(model, prompt, max_new_tokens=8, eos_token_ids=(stop,)).tokens[0]
    assert out.tolist() == free[: list(free).index(stop) + 1].tolist()


def test_bad_inputs_name_the_problem(model):
    with pytest.raises(ValueError, match=r"token id 99999 out of range \[0, 320\)"):
        model.forward([[1, 99999]])
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, seq\]"):
        model.forward([1, 2, 3])
    # As transformers: such a config can be held (and loaded); sampling with it raises.
    cfg = GenerationConfig(temperature=0, do_sample=True)
    with pytest.raises(ValueError, match="temperature must be > 0 when sampling"):
        generate(model, [[1, 2]], cfg)


def test_unknown_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ConfigError,
                       match=r"model_type 'gpt2' is not supported; known: \['llama', "
                             r"'mistral', 'qwen2', 'qwen3'\]"):
        AutoLlamaModel.from_pretrained(tmp_path)


def test_cli_generates_the_same_tokens_as_the_api(model):
    path = resolve_model(MODEL)
    cmd = [sys.executable, "-m", "infinilm_models", "generate", "--model", str(path),
           "--prompt", "the water", "--max-new-tokens", "6", "--ignore-eos", "-q"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    ids = tok.encode("the water").ids
    want = generate(model, [ids], max_new_tokens=6, eos_token_ids=()).tokens[0].tolist()
    assert out.stdout.rstrip("\n") == "the water" + tok.decode(want, skip_special_tokens=True)


@pytest.mark.parametrize("layout", [{}, {"tp": 2}, {"pp": 2}])
@pytest.mark.parametrize("kwargs,error,match", [
    ({"dtype": "f64"}, ValueError, "dtype f64 not supported"),
    ({"dtype": 3}, TypeError, "dtype must be"),
    ({"max_cache_len": 0}, ValueError, "max_cache_len"),
    ({"progress": "no"}, TypeError, "progress"),
], ids=["f64", "dtype_type", "max_cache_len", "progress"])
def test_every_layout_checks_load_arguments_alike(layout, kwargs, error, match):
    """A sharded load refuses what an unsharded one refuses, with the same message."""
    kwargs = {"dtype": "f32", "progress": False, **kwargs}
    dtype = kwargs.pop("dtype")
    with pytest.raises(error, match=match):
        AutoLlamaModel.from_pretrained(resolve_model(MODEL), "cpu", dtype, **layout, **kwargs)


def test_loading_holds_each_weight_on_the_device_once():
    """q/k/v and gate/up are fused on the host: the device never holds a weight twice while
    loading (fusing on the device took SmolLM2 bf16 to a 408 MB peak for 269 MB)."""
    import gc

    from infinilm_models.runtime import Device

    gc.collect()
    cpu = Device("cpu")
    before = memory.allocated_bytes(cpu)
    memory.reset_peak(cpu)
    m = AutoLlamaModel.from_pretrained(resolve_model(MODEL), "cpu", "f32", progress=False)
    assert memory.max_allocated_bytes(cpu) - before == memory.allocated_bytes(cpu) - before
    assert m.model.layers[0].self_attn.qkv_proj.shape[0] == \
        (m.config.num_attention_heads + 2 * m.config.num_key_value_heads) * m.config.head_dim
