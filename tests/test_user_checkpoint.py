"""A user's own checkpoint, end to end (issue 12): what from_pretrained, forward and generate
do with directories and arguments the fixtures do not exercise. Each directory is a tiny
fixture copied into tmp_path and changed the way a user's checkpoint differs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infinilm_fixtures.tiny import ensure
from infinilm_models import AutoLlamaModel, generate
from infinilm_models.models.llama import ConfigError, LlamaForCausalLM

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
    # Built for what a cache can hold (max_cache_len 2048), not for 2^20 positions.
    assert model.max_cache_len == 2048 and model.rotary_emb.rows == 2048
    assert model.rotary_emb.sin.shape == (2048, model.config.head_dim // 2)
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
