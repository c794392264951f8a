"""A user's own checkpoint, end to end (issue 12): what from_pretrained, forward and generate
do with directories and arguments the fixtures do not exercise. Each directory is a tiny
fixture copied into tmp_path and changed the way a user's checkpoint differs."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from infinilm_fixtures.tiny import ensure
from infinilm_models import AutoLlamaModel, GenerationConfig, generate
from infinilm_models.models.llama import CheckpointError, ConfigError, LlamaForCausalLM

PROMPT = [[5, 17, 42, 99, 7]]


def _copy(name: str, tmp_path: Path, dst: str | None = None) -> Path:
    out = tmp_path / (dst or name)
    shutil.copytree(ensure(name), out)
    return out


def _edit_config(model_dir: Path, **changes: Any) -> None:
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _load(model_dir: Path, **kwargs: Any) -> LlamaForCausalLM:
    return AutoLlamaModel.from_pretrained(model_dir, "cpu", kwargs.pop("dtype", "f32"),
                                          progress=False, **kwargs)


@pytest.fixture(scope="module")
def gqa() -> LlamaForCausalLM:
    return _load(ensure("gqa"))


def _greedy(model: LlamaForCausalLM, n: int = 8) -> list[int]:
    return generate(model, PROMPT, max_new_tokens=n, eos_token_ids=()).tokens[0].tolist()


# ------------------------------------------------------------------ checkpoint content


def test_float64_checkpoint_runs_in_f32(tmp_path: Path, gqa: LlamaForCausalLM) -> None:
    model_dir = _copy("gqa", tmp_path)
    path = model_dir / "model.safetensors"
    save_file({k: v.astype(np.float64) for k, v in load_file(str(path)).items()}, str(path),
              metadata={"format": "pt"})
    _edit_config(model_dir, torch_dtype="float64")
    want = gqa.forward(PROMPT, all_logits=True).numpy().copy()
    for dtype in (None, "f32"):
        model = AutoLlamaModel.from_pretrained(model_dir, "cpu", dtype, progress=False)
        assert model.dtype.short == "f32" and model.config.dtype == "float64"
        # f32 values stored as f64 come back exactly: the very same logits.
        np.testing.assert_array_equal(model.forward(PROMPT, all_logits=True).numpy(), want)
    with pytest.raises(ValueError, match="dtype f64 not supported"):
        AutoLlamaModel.from_pretrained(model_dir, "cpu", "f64", progress=False)


def test_nan_weight_is_refused_unless_diagnosing(tmp_path: Path) -> None:
    model_dir = _copy("gqa", tmp_path)
    path = model_dir / "model.safetensors"
    tensors = load_file(str(path))
    name = "model.layers.2.mlp.up_proj.weight"
    tensors[name][11, 5] = np.nan
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"{path}: tensor '{name}' holds 1 non-finite"):
        _load(model_dir)
    with pytest.warns(UserWarning, match=name):
        model = _load(model_dir, allow_nonfinite=True)
    got: dict[str, np.ndarray] = {}
    logits = model.forward(PROMPT, capture=got).numpy()
    assert np.isnan(logits).all()  # why the default is an error
    assert np.isfinite(got["layers.1"]).all() and not np.isfinite(got["layers.2.mlp"]).all()


def test_config_json_holding_a_list_names_the_file(tmp_path: Path) -> None:
    model_dir = _copy("tied", tmp_path)
    (model_dir / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(ConfigError, match="config must be a JSON object, got list") as info:
        _load(model_dir)
    assert str(model_dir / "config.json") in str(info.value)
    (model_dir / "config.json").write_text('{"model_type": ["llama"]}')
    with pytest.raises(ConfigError, match=r"model_type \['llama'\] is not supported"):
        _load(model_dir)


# ------------------------------------------------------------------------------ RoPE


def test_rope_tables_cover_the_cache_not_every_position(tmp_path: Path) -> None:
    model_dir = _copy("gqa", tmp_path)
    _edit_config(model_dir, max_position_embeddings=2**20)
    model = _load(model_dir)
    # The model holds every position the checkpoint allows (issue 33), but its tables and a
    # default cache are built for 2048 of them, not for 2^20.
    assert model.max_cache_len == 2**20 and model.rotary_emb.rows == 2048
    assert model.rotary_emb.sin.shape == (2048, model.config.head_dim // 2)
    assert model.new_cache(1).max_len == 2048
    small = _load(model_dir, max_cache_len=16)
    assert small.rotary_emb.rows == 16
    # Explicit positions beyond the table grow it; the numbers are those of a big table.
    pos = np.arange(3000, 3005)[None, :]
    got = small.forward(PROMPT, pos, all_logits=True).numpy().copy()
    assert small.rotary_emb.rows >= 3005
    np.testing.assert_array_equal(got, model.forward(PROMPT, pos, all_logits=True).numpy())
    with pytest.raises(ValueError, match=r"position ids must be in \[0, 1048576\)"):
        small.forward(PROMPT, pos + 2**20)

    # 2^31 - 1 positions: the table had to be 16 GiB; now the model loads and matches HF.
    _edit_config(model_dir, max_position_embeddings=2**31 - 1)
    model = _load(model_dir)
    assert model.rotary_emb.rows == 2048
    pos = np.arange(100_000, 100_005)[None, :]
    ours = model.forward(PROMPT, pos, all_logits=True).numpy().astype(np.float64)
    ref = _hf_logits(model_dir, PROMPT, pos)
    assert np.mean((ours - ref) ** 2) / np.mean(ref ** 2) <= 1e-10


def _hf_logits(model_dir: Path, ids: list[list[int]], pos: np.ndarray | None = None
               ) -> np.ndarray:
    import torch
    from transformers import LlamaForCausalLM as HFLlama

    hf = HFLlama.from_pretrained(model_dir, dtype=torch.float32)
    kwargs = {} if pos is None else {"position_ids": torch.from_numpy(pos)}
    with torch.inference_mode():
        return hf(torch.tensor(ids), **kwargs).logits.double().numpy()


# ------------------------------------------------------------------------ arguments


@pytest.mark.parametrize(("value", "error", "match"), [
    (0, ValueError, "max_cache_len must be >= 1, got 0"),
    (-5, ValueError, "max_cache_len must be >= 1, got -5"),
    (2.5, TypeError, r"max_cache_len must be an integer, got 2\.5"),
    (True, TypeError, "max_cache_len must be an integer, got True"),
    ("64", TypeError, "max_cache_len must be an integer, got '64'"),
])
def test_max_cache_len_is_validated(value: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        _load(ensure("tied"), max_cache_len=value)


def test_max_cache_len_default_and_clamp() -> None:
    # The tiny fixtures accept 256 positions: no cache longer than that.
    assert _load(ensure("tied")).max_cache_len == 256
    assert _load(ensure("tied"), max_cache_len=40).max_cache_len == 40


@pytest.mark.parametrize(("ids", "error", "match"), [
    ([[1.9, 2.9]], TypeError, r"input_ids\[0\]\[0\] \(1\.9, float\) is not an integer"),
    (np.array([[1.0, 2.0]]), TypeError, "input_ids must hold integer token ids, got an array "
                                        "of float64"),
    ([["5", "6"]], TypeError, r"input_ids\[0\]\[0\] \('5', str\)"),
    ([[True, 2]], TypeError, r"input_ids\[0\]\[0\] \(True, bool\)"),
    (np.array([[True, False]]), TypeError, "array of bool"),
    ("hello", TypeError, "input_ids must be \\[batch, seq\\] token ids"),
    ([[]], ValueError, r"batch >= 1 and seq >= 1, got shape \(1, 0\)"),
    ([], ValueError, r"batch >= 1 and seq >= 1, got shape \(0, 0\)"),
    ([[2**70]], ValueError, "beyond int64"),
    ([[1, -3]], ValueError, r"token id -3 out of range \[0, 320\) at input_ids\[0\]\[1\]"),
    ([1, 2, 3], ValueError, r"input_ids must be \[batch, seq\]"),
])
def test_token_ids_are_validated(gqa: LlamaForCausalLM, ids: Any, error: type,
                                 match: str) -> None:
    with pytest.raises(error, match=match):
        gqa.forward(ids)
    with pytest.raises(error, match=match):
        generate(gqa, ids, max_new_tokens=2)


def test_unequal_prompts_forward_needs_padding_generate_pads(gqa: LlamaForCausalLM) -> None:
    with pytest.raises(ValueError, match="all prompts must have the same length here"):
        gqa.forward([[1, 2, 3], [4, 5]])
    out = generate(gqa, [[1, 2, 3], [4, 5]], max_new_tokens=2, eos_token_ids=())
    assert out.tokens.shape == (2, 2)
    with pytest.raises(ValueError, match=r"input_ids\[1\] is empty"):
        generate(gqa, [[1, 2, 3], []], max_new_tokens=2)


def test_integer_ids_of_any_kind_are_accepted(gqa: LlamaForCausalLM) -> None:
    want = gqa.forward(PROMPT).numpy().copy()
    for ids in (np.array(PROMPT, dtype=np.int32), np.array(PROMPT, dtype=np.uint16),
                tuple(tuple(r) for r in PROMPT), [np.array(PROMPT[0])],
                [[np.int64(i) for i in PROMPT[0]]]):
        np.testing.assert_array_equal(gqa.forward(ids).numpy(), want)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"max_new_tokens": 2.5}, TypeError, r"max_new_tokens must be an integer, got 2\.5"),
    ({"max_new_tokens": 0}, ValueError, "max_new_tokens must be >= 1, got 0"),
    ({"temperature": math.nan}, ValueError, "temperature must be a finite number, got nan"),
    ({"temperature": math.nan, "do_sample": True}, ValueError, "temperature must be a finite"),
    ({"temperature": 1e-50, "do_sample": True}, ValueError, "not 0 in float32"),
    ({"top_p": 0.0, "do_sample": True}, ValueError, r"top_p must be in \(0, 1\] when sampling"),
    ({"top_p": math.inf}, ValueError, "top_p must be a finite number"),
    ({"top_k": -1}, ValueError, "top_k must be >= 0"),
    ({"do_sample": 1}, TypeError, "do_sample must be True or False, got 1"),
    ({"seed": -1}, ValueError, "seed must be >= 0"),
    ({"eos_token_ids": [2, "x"]}, TypeError, r"eos_token_ids\[1\] must be an integer"),
    ({"temprature": 0.5}, TypeError, r"unknown generation argument\(s\) \['temprature'\]"),
    ({"return_logits": "yes"}, TypeError, "return_logits must be True or False"),
])
def test_generation_arguments_are_validated(gqa: LlamaForCausalLM, kwargs: dict, error: type,
                                            match: str) -> None:
    with pytest.raises(error, match=match):
        generate(gqa, PROMPT, **kwargs)


def test_greedy_ignores_sampling_ranges(gqa: LlamaForCausalLM) -> None:
    # As in transformers: temperature 0 or top_p 0 with greedy decoding is not an error.
    want = _greedy(gqa, 4)
    assert generate(gqa, PROMPT, max_new_tokens=4, eos_token_ids=(), top_p=0.0,
                    temperature=0.0).tokens[0].tolist() == want
    # top_k beyond the vocabulary (or C int) is "no limit", not a ctypes error.
    generate(gqa, PROMPT, max_new_tokens=2, do_sample=True, top_k=2**40, seed=0)


def test_config_object_and_keywords(gqa: LlamaForCausalLM) -> None:
    base = GenerationConfig(max_new_tokens=3, eos_token_ids=())
    assert generate(gqa, PROMPT, base).tokens.shape == (1, 3)
    assert generate(gqa, PROMPT, base, max_new_tokens=5).tokens.shape == (1, 5)
    with pytest.raises(TypeError, match="config must be a GenerationConfig, got dict"):
        generate(gqa, PROMPT, {"max_new_tokens": 3})  # type: ignore[arg-type]


# ------------------------------------------------------------ generation_config.json


def test_generation_config_eos_list_stops_like_transformers(tmp_path: Path,
                                                            gqa: LlamaForCausalLM) -> None:
    free = _greedy(gqa)
    # A token first produced after step 0, so that the stop is visibly early.
    at = next(i for i in range(1, len(free)) if free[i] not in free[:i] and free[i] != 2)
    stop = free[at]
    model_dir = _copy("gqa", tmp_path)
    # Llama-3-Instruct style: config.json says one eos, generation_config.json a list.
    (model_dir / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": [319, stop], "transformers_version": "5.0"}))
    model = _load(model_dir)
    assert model.generation_config.eos_token_ids == (319, stop)
    assert model.config.eos_token_ids == (2,)
    ours = generate(model, PROMPT, max_new_tokens=8).tokens[0].tolist()
    assert ours == free[:at + 1]

    import torch
    from transformers import LlamaForCausalLM as HFLlama

    hf = HFLlama.from_pretrained(model_dir, dtype=torch.float32)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = hf.generate(torch.tensor(PROMPT), max_new_tokens=8)
    assert ours == ref[0, len(PROMPT[0]):].tolist()


def test_without_generation_config_the_model_config_decides(gqa: LlamaForCausalLM) -> None:
    assert gqa.generation_config == GenerationConfig(eos_token_ids=(2,), bos_token_id=1)


def test_generation_config_without_eos_means_no_eos(tmp_path: Path) -> None:
    # transformers: the file alone decides; config.json's eos is not merged in.
    model_dir = _copy("gqa", tmp_path)
    (model_dir / "generation_config.json").write_text('{"max_new_tokens": 6}')
    model = _load(model_dir)
    assert model.generation_config.eos_token_ids == ()
    assert generate(model, PROMPT).tokens.shape == (1, 6)


def test_generation_config_sampling_defaults_and_overrides(tmp_path: Path,
                                                           gqa: LlamaForCausalLM) -> None:
    model_dir = _copy("gqa", tmp_path)
    (model_dir / "generation_config.json").write_text(json.dumps({
        "do_sample": True, "temperature": 0.7, "top_k": 7, "top_p": 0.9,
        "max_new_tokens": 9, "eos_token_id": None, "pad_token_id": 0, "max_length": 4096}))
    model = _load(model_dir)
    cfg = model.generation_config
    assert (cfg.do_sample, cfg.temperature, cfg.top_k, cfg.top_p, cfg.max_new_tokens,
            cfg.eos_token_ids, cfg.pad_token_id) == (True, 0.7, 7, 0.9, 9, (), 0)
    a = generate(model, PROMPT, seed=3).tokens
    assert a.shape == (1, 9)
    np.testing.assert_array_equal(a, generate(model, PROMPT, seed=3).tokens)
    # Explicit arguments beat the file.
    assert generate(model, PROMPT, do_sample=False, max_new_tokens=8).tokens[0].tolist() == (
        _greedy(gqa))


@pytest.mark.parametrize(("content", "match"), [
    ('{"eos_token_id": "x"}', r"eos_token_id must be an integer, got 'x'"),
    ('{"eos_token_id": [2, -1]}', "eos_token_id must be >= 0, got -1"),
    ('{"temperature": "hot"}', "temperature must be a number, got 'hot'"),
    ('{"top_k": -1}', "top_k must be >= 0"),
    ('{"max_new_tokens": 0}', "max_new_tokens must be >= 1"),
    ('{"do_sample": "yes"}', "do_sample must be True or False"),
    ('{"pad_token_id": 1.5}', "pad_token_id must be an integer"),
    ("[1]", "must be a JSON object, got list"),
    ('{"eos_token_id": ', "invalid JSON"),
])
def test_bad_generation_config_names_file_and_field(tmp_path: Path, content: str,
                                                    match: str) -> None:
    model_dir = _copy("tied", tmp_path)
    (model_dir / "generation_config.json").write_text(content)
    with pytest.raises(ConfigError, match=match) as info:
        _load(model_dir)
    assert str(info.value).startswith(f"{model_dir / 'generation_config.json'}: ")
