"""Clear errors and transformers' meaning where they were raw or different (issue 20):
generation_config.json's max_length, do_sample with temperature 0, the vocab mismatch, the
CLI's non-finite weights, what model.dtype prints, and what tox passes on."""

from __future__ import annotations

import configparser
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import PROMPT, copy_fixture, edit_json, retensor, run_cli  # tests/ on sys.path

from infinilm_models import AutoLlamaModel, GenerationConfig, generate
from infinilm_models.models.llama import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


def _hf_new_tokens(model_dir: Path, prompt: list[int]) -> int:
    """How many tokens transformers generates with the directory's own defaults."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir)
    out = model.generate(torch.tensor([prompt]), pad_token_id=0)
    return out.shape[1] - len(prompt)


def test_max_length_alone_counts_the_prompt_as_transformers(tmp_path: Path) -> None:
    """A generation_config.json with only max_length: transformers generates max_length -
    prompt tokens (it was ignored here: 20 new tokens where transformers gives 3)."""
    model_dir = copy_fixture(tmp_path)
    (model_dir / "generation_config.json").write_text(json.dumps({"max_length": 8}))
    model = AutoLlamaModel.from_pretrained(model_dir, "cpu", "f32", progress=False)
    out = generate(model, [PROMPT], eos_token_ids=())
    assert out.tokens.shape[1] == 8 - len(PROMPT)
    # transformers stops early only at an eos; with none reached it makes the same count
    assert _hf_new_tokens(model_dir, PROMPT) <= out.tokens.shape[1]
    with pytest.raises(ValueError, match="max_length 8 leaves no room"):
        generate(model, [list(range(1, 9))])
    assert generate(model, [PROMPT], max_new_tokens=2).tokens.shape[1] == 2  # wins


@pytest.mark.parametrize("bad, match", [
    ({"temperature": 0}, "temperature must be > 0 when sampling"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\] when sampling"),
], ids=["temperature0", "top_p1.5"])
def test_sampling_with_temperature_zero_loads_then_refuses_to_sample(tmp_path: Path, bad,
                                                                     match) -> None:
    """do_sample true with temperature 0 (or top_p 1.5) in the file: transformers loads it
    and raises when it samples; this project refused to load the model at all."""
    model_dir = copy_fixture(tmp_path)
    (model_dir / "generation_config.json").write_text(json.dumps({"do_sample": True, **bad}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = AutoLlamaModel.from_pretrained(model_dir, "cpu", "f32", progress=False)
    assert any("generation_config.json" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match=match):
        generate(model, [PROMPT], max_new_tokens=2)
    assert generate(model, [PROMPT], max_new_tokens=2, do_sample=False).tokens.shape == (1, 2)
    GenerationConfig(do_sample=True, temperature=0)  # holding one is no error


def test_vocab_mismatch_names_vocab_size(tmp_path: Path) -> None:
    model_dir = copy_fixture(tmp_path)
    edit_json(model_dir / "config.json", lambda c: c.update(vocab_size=c["vocab_size"] + 7))
    with pytest.raises(CheckpointError, match=r"config.json says vocab_size = \d+, but "
                                              r"model.embed_tokens.weight .* has \d+ rows"):
        AutoLlamaModel.from_pretrained(model_dir, "cpu", "f32", progress=False)


def test_cli_loads_nonfinite_weights_with_its_flag(tmp_path: Path) -> None:
    model_dir = copy_fixture(tmp_path, tokenizer=False)

    def nan(t: dict[str, np.ndarray]) -> None:
        t["model.norm.weight"][0] = np.nan

    retensor(model_dir, nan)
    refused = run_cli("--model", model_dir, "--token-ids", "5,6", "--max-new-tokens", "1")
    assert refused.returncode == 2 and "--allow-nonfinite" in refused.stderr
    loaded = run_cli("--model", model_dir, "--token-ids", "5,6", "--max-new-tokens", "1",
                     "--allow-nonfinite", "-q")
    # Loaded (and it says so); the NaN logits then end the run without a token (issue 30).
    assert "loaded anyway (allow_nonfinite=True)" in loaded.stderr, loaded.stderr
    assert loaded.returncode == 2 and loaded.stdout == "", loaded
    assert loaded.stderr.splitlines()[-1].startswith("error: generate: the logits of step 0")


def test_model_dtype_prints_its_name() -> None:
    from infinilm_fixtures.tiny import ensure

    model = AutoLlamaModel.from_pretrained(ensure("gqa"), "cpu", "bf16", progress=False)
    assert str(model.dtype) == "bf16" and f"{model.dtype}" == "bf16"


def test_tox_passes_the_backend_switches_on() -> None:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "tox.ini")
    passed = ini["testenv"]["pass_env"].split()
    for needed in ("INFINI_*", "INFINILM_*", "CUDA_VISIBLE_DEVICES", "NCCL_*"):
        assert needed in passed
