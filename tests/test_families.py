"""The families through the registry and the LLaMA options, against transformers' own
checkpoints: logits of every position and greedy tokens agree (f32), the paths that need
many positions or a config no fixture has (dynamic RoPE's state past its original length,
longrope's switch, Qwen2's sliding layers, linear RoPE) included; what stays unsupported is
refused in one line naming the field, before any weight is read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conformance.model.harness import reset_rope_state, resolve_model
from infinilm_models import AutoLlamaModel, AutoModel, generate
from infinilm_models.models import MODEL_REGISTRY
from infinilm_models.models.llama import ConfigError

FAMILIES = {"tiny-qwen2": "Qwen2ForCausalLM", "tiny-qwen3": "Qwen3ForCausalLM",
            "tiny-mistral": "MistralForCausalLM", "tiny-bias": "LlamaForCausalLM",
            "tiny-longrope": "LlamaForCausalLM", "tiny-dynamic": "LlamaForCausalLM"}
F32_NMSE = 1e-9  # tolerances.toml model_logits.f32 floor (transformers is the golden)


def hf(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def ours(path: Path, **kwargs):
    return AutoModel.from_pretrained(path, "cpu", "f32", progress=False, **kwargs)


def nmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a - b) ** 2).sum() / (b ** 2).sum())


def ids_for(model, n: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, model.config.vocab_size, (batch, n))


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.as_tensor(ids)).logits.double().numpy()


def hf_decode(model, ids: np.ndarray, prefix: int) -> np.ndarray:
    """transformers through its cache, teacher forced: last logits of each step."""
    import torch
    from transformers import DynamicCache

    cache, rows = DynamicCache(), []
    with torch.inference_mode():
        for a, b in [(0, prefix)] + [(i, i + 1) for i in range(prefix, ids.shape[1])]:
            out = model(torch.as_tensor(ids[:, a:b]), past_key_values=cache, use_cache=True)
            rows.append(out.logits[:, -1].double().numpy())
    return np.stack(rows, axis=1)


def our_decode(model, ids: np.ndarray, prefix: int) -> np.ndarray:
    cache = model.new_cache(ids.shape[0], ids.shape[1])
    rows = [model.forward(ids[:, :prefix], cache=cache).numpy()[:, -1]]
    rows += [model.forward(ids[:, i:i + 1], cache=cache).numpy()[:, -1]
             for i in range(prefix, ids.shape[1])]
    return np.stack(rows, axis=1).astype(np.float64)


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def edited(tmp_path: Path, name: str, **config) -> Path:
    """A copy of a fixture with config.json keys replaced."""
    dst = tmp_path / name
    shutil.copytree(resolve_model(name), dst)
    data = json.loads((dst / "config.json").read_text())
    data.update(config)
    (dst / "config.json").write_text(json.dumps(data))
    return dst


# -- every family and option: logits and greedy tokens ----------------------------------


@pytest.mark.parametrize("name", list(FAMILIES))
def test_checkpoint_agrees_with_transformers(name: str) -> None:
    path = resolve_model(name)
    m, ref = ours(path), hf(path)
    assert type(m).__name__ == FAMILIES[name] == type(ref).__name__
    # 80 positions: past the mistral window (8) and longrope's original length (64)
    ids = ids_for(m, 80, batch=2)
    assert nmse(m.forward(ids, all_logits=True).numpy(), hf_logits(ref, ids)) < F32_NMSE
    prompt = ids[0, :6].tolist()
    got = generate(m, [prompt], max_new_tokens=12, eos_token_ids=()).tokens[0].tolist()
    assert got == hf_greedy(ref, prompt, 12)


@pytest.mark.parametrize("name", ["tiny-mistral", "tiny-longrope", "tiny-bias"])
def test_cached_decoding_agrees_with_transformers(name: str) -> None:
    """Through the KV cache past the window (mistral: every step beyond 8 positions) and
    across longrope's switch to its long factors at 65 positions (the keys cached before
    keep their short-factor rotation, as in transformers)."""
    path = resolve_model(name)
    m, ref = ours(path), hf(path)
    ids = ids_for(m, 90, batch=2, seed=1)
    assert nmse(our_decode(m, ids, 10), hf_decode(ref, ids, 10)) < F32_NMSE


def test_left_padded_batch_with_a_window_generates_like_transformers() -> None:
    """Prompts of 13 and 4 tokens left-padded to one batch, past the window of 8 in the
    prefill and in decoding: padding and the window masked together (transformers counts
    the window in cache positions, padding included, and so do we)."""
    import torch

    path = resolve_model("tiny-mistral")
    m, ref = ours(path), hf(path)
    prompts = [list(range(20, 33)), [5, 6, 7, 8]]
    ids = np.zeros((2, 13), dtype=np.int64)
    mask = np.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, 13 - len(p):], mask[b, 13 - len(p):] = p, 1
    got = generate(m, prompts, max_new_tokens=10, eos_token_ids=()).tokens
    with torch.inference_mode():
        want = ref.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                            max_new_tokens=10, min_new_tokens=10, do_sample=False,
                            pad_token_id=0)[:, 13:].numpy()
        logits = ref(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits[:, -1]
    np.testing.assert_array_equal(got, want)  # token ids: integers
    assert nmse(m.forward(ids, attention_mask=mask).numpy()[:, -1],
                logits.double().numpy()) < F32_NMSE


def test_fixed_decode_step_of_every_family_equals_the_plain_one() -> None:
    """The fixed-shape step (the captured graph's, eager on the CPU): the window's own
    mask, biases and q/k norms included."""
    for name in FAMILIES:
        m = ours(resolve_model(name))
        ids = ids_for(m, 30, batch=2, seed=2)
        plain = our_decode(m, ids, 6)
        cache = m.new_cache(2, 30)
        m.forward(ids[:, :6], cache=cache)
        decoder = m.fixed_decoder(cache, graph=False)
        steps = [decoder.step(ids[:, i]).numpy()[:, 0].astype(np.float64)
                 for i in range(6, 30)]
        assert nmse(np.stack(steps, axis=1), plain[:, 1:]) < 1e-10, name


# -- RoPE beyond what the fixtures' default checks reach -------------------------------


def test_dynamic_rope_follows_transformers_state_machine() -> None:
    """Dynamic NTK keeps the frequencies of the longest forward past the original length
    (256) until a shorter-than-original forward resets them; ours and transformers' go
    through the same calls: grow to 300, a 280-long forward (still 300's frequencies), a
    short one (reset), then decoding past 256 (new frequencies at every step)."""
    path = resolve_model("tiny-dynamic")
    m, ref = ours(path, max_cache_len=320), hf(path)
    for n in (300, 280, 40, 270):
        ids = ids_for(m, n, seed=n)
        assert nmse(m.forward(ids, all_logits=True).numpy(), hf_logits(ref, ids)) < F32_NMSE, n
    reset_rope_state(m)
    reset_rope_state(ref)
    ids = ids_for(m, 300, seed=3)
    assert nmse(our_decode(m, ids, 240), hf_decode(ref, ids, 240)) < F32_NMSE
    assert m.rotary_emb.max_seq_len_cached == ref.model.rotary_emb.max_seq_len_cached == 300


def test_linear_rope_agrees_with_transformers(tmp_path: Path) -> None:
    path = edited(tmp_path, "tiny-gqa", rope_scaling={"rope_type": "linear", "factor": 4.0})
    m, ref = ours(path), hf(path)
    ids = ids_for(m, 40, batch=2)
    assert nmse(m.forward(ids, all_logits=True).numpy(), hf_logits(ref, ids)) < F32_NMSE


def test_qwen2_sliding_layers_and_their_pipeline_split(tmp_path: Path) -> None:
    """use_sliding_window: the layers from max_window_layers on attend within the window
    (here layer 1 of 2, window 6); one layer per pipeline stage keeps each its own."""
    path = edited(tmp_path, "tiny-qwen2", use_sliding_window=True, sliding_window=6,
                  max_window_layers=1, layer_types=None)
    m, ref = ours(path), hf(path)
    assert m.config.windows == (None, 6)
    ids = ids_for(m, 24, batch=2, seed=4)
    want = hf_logits(ref, ids)
    assert nmse(m.forward(ids, all_logits=True).numpy(), want) < F32_NMSE
    assert nmse(our_decode(m, ids, 4), hf_decode(ref, ids, 4)) < F32_NMSE
    par = AutoLlamaModel.from_pretrained(path, "cpu", "f32", pp=2, progress=False)
    try:
        assert [r.config.windows for r in par.ranks] == [(None,), (6,)]
        assert nmse(par.forward(ids, all_logits=True).numpy(), want) < F32_NMSE
    finally:
        par.close()


@pytest.mark.parametrize("name,tp", [("tiny-bias", 2), ("tiny-qwen2", 2), ("tiny-qwen3", 2)])
def test_tensor_parallel_splits_biases_and_norms(name: str, tp: int) -> None:
    """q/k/v biases split with their heads, o_proj/down_proj biases added once (rank 0),
    q_norm/k_norm whole on every rank."""
    path = resolve_model(name)
    par = AutoModel.from_pretrained(path, "cpu", "f32", tp=tp, progress=False)
    try:
        ids = ids_for(par, 20, batch=2, seed=5)
        assert nmse(par.forward(ids, all_logits=True).numpy(), hf_logits(hf(path), ids)) \
            < F32_NMSE
    finally:
        par.close()


# -- refused, in one line naming the field, before any weight is read -------------------


@pytest.mark.parametrize("name,config,match", [
    ("tiny-gqa", {"rope_scaling": {"rope_type": "proportional", "factor": 2.0}},
     r"rope_scaling\.rope_type \('proportional'\) is not supported"),
    ("tiny-gqa", {"rope_scaling": {"rope_type": "default", "partial_rotary_factor": 0.5}},
     r"rope_scaling\.partial_rotary_factor \(0\.5\) is not supported"),
    ("tiny-qwen2", {"layer_types": ["full_attention", "sliding_attention"]},
     r"layer_types names layer 1 'sliding_attention' but there is no window"),
    ("tiny-qwen2", {"layer_types": ["full_attention"]}, r"layer_types \(\['full_attention'\]\)"),
    ("tiny-qwen3", {"hidden_act": "gelu"}, r"hidden_act \('gelu'\) is not supported"),
    ("tiny-mistral", {"sliding_window": 0}, r"sliding_window \(0\) must be a positive"),
    ("tiny-longrope", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4,
                                           "short_factor": [1.0], "long_factor": [1.0]}},
     r"rope_scaling\.short_factor has 1 entries; it needs head_dim / 2 = 8"),
], ids=["rope-proportional", "partial-rotary", "qwen2-sliding-without-window",
        "qwen2-layer-types-length", "qwen3-gelu", "mistral-window-zero", "longrope-length"])
def test_unsupported_is_refused_before_any_weight(tmp_path: Path, name: str, config: dict,
                                                  match: str) -> None:
    path = edited(tmp_path, name, **config)
    (path / "model.safetensors").write_bytes(b"not read")  # a weight read would fail
    with pytest.raises(ConfigError, match=match) as info:
        AutoModel.from_pretrained(path, "cpu", "f32", progress=False)
    assert str(path / "config.json") in str(info.value) and "\n" not in str(info.value)


def test_paged_attention_is_not_chosen_for_a_windowed_model() -> None:
    """Paged attention attends to every cached position: the plan never takes it for a
    model with a sliding window (asked by name, the plan refuses it)."""
    from infinilm_models.models.llama.fusion import BY_NAME

    config = ours(resolve_model("tiny-mistral")).config
    assert config.windows == (8, 8)
    assert not BY_NAME["paged_attention"].fits(config)


def test_registry_lists_every_family() -> None:
    assert sorted(MODEL_REGISTRY) == ["llama", "mistral", "qwen2", "qwen3"]
    assert AutoLlamaModel.from_pretrained is AutoModel.from_pretrained
