"""Issue 30, item 5: without generation_config.json, generation defaults come from
config.json as a transformers model takes them (`GenerationConfig.from_model_config`):
the pad, bos and eos ids and any generation field it sets.

Before: config.json's pad_token_id was ignored, and a batch row that finished early was
filled with the eos id where transformers writes the pad id.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from infinilm_fixtures.tiny import ensure
from infinilm_models import AutoLlamaModel, GenerationConfig, generate

PROMPTS = [[5, 17, 42, 99, 7], [9, 8, 7, 6, 5]]
FREE_STEPS = 20  # transformers' default length (and ours)


def _copy(tmp_path: Path, name: str = "gqa") -> Path:
    out = tmp_path / name
    shutil.copytree(ensure(name), out)
    assert not (out / "generation_config.json").exists()
    return out


def _edit(model_dir: Path, **changes) -> None:
    path = model_dir / "config.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DROP:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


_DROP = object()


def _hf_greedy(hf, prompts: list[list[int]], steps: int) -> np.ndarray:
    """transformers' own argmax continuation, without any stopping rule."""
    import torch

    ids = torch.tensor(prompts)
    with torch.inference_mode():
        for _ in range(steps):
            nxt = hf(ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return ids[:, len(prompts[0]):].numpy()


def test_pad_fill_of_an_early_finished_row_matches_transformers(tmp_path: Path) -> None:
    import torch
    from transformers import LlamaForCausalLM

    model_dir = _copy(tmp_path)
    free = _hf_greedy(LlamaForCausalLM.from_pretrained(model_dir), PROMPTS, FREE_STEPS)
    # An eos that row 0 reaches early and row 1 never does, and a pad id that is neither.
    eos, step = next((int(t), k) for k, t in enumerate(free[0][:FREE_STEPS // 2])
                     if t not in free[0][:k] and t not in free[1])
    pad = next(p for p in range(3, 320) if p != eos)
    _edit(model_dir, eos_token_id=eos, pad_token_id=pad)

    hf = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert hf.generation_config.pad_token_id == pad  # transformers' default from config.json
    with torch.inference_mode():
        want = hf.generate(torch.tensor(PROMPTS), attention_mask=torch.ones(2, 5,
                                                                             dtype=torch.long))
    want = want[:, len(PROMPTS[0]):].numpy()

    model = AutoLlamaModel.from_pretrained(model_dir, "cpu", "f32", progress=False)
    got = generate(model, PROMPTS).tokens  # the checkpoint's defaults, as in transformers
    np.testing.assert_array_equal(got, want)
    assert got[0, step] == eos and (got[0, step + 1:] == pad).all() and got.shape[1] > step + 1


@pytest.mark.parametrize("changes", [
    {"pad_token_id": 7},
    {"pad_token_id": None},
    {"bos_token_id": _DROP, "eos_token_id": _DROP},  # unset (LlamaConfig's 1, 2 unused)
    {"eos_token_id": None, "pad_token_id": 0},
    {"eos_token_id": [3, 4], "bos_token_id": 0},
    {"max_length": 12, "do_sample": True, "top_k": 7, "temperature": 0.5, "top_p": 0.8},
    {"max_new_tokens": 6, "pad_token_id": 2},
], ids=["pad", "pad-null", "ids-absent", "eos-null", "eos-list", "sampling", "new-tokens"])
def test_defaults_are_those_of_a_transformers_model(tmp_path: Path, changes: dict) -> None:
    """The generation_config a transformers model gets from this config.json alone (its
    LlamaConfig keeps no sampling field, the model's generation_config does)."""
    from transformers import LlamaForCausalLM

    model_dir = _copy(tmp_path)
    _edit(model_dir, **changes)
    theirs = LlamaForCausalLM.from_pretrained(model_dir).generation_config
    ours = GenerationConfig.from_pretrained(model_dir)
    their_eos = theirs.eos_token_id
    their_eos = () if their_eos is None else tuple(np.atleast_1d(their_eos).tolist())
    assert ours.eos_token_ids == their_eos
    assert (ours.bos_token_id, ours.pad_token_id) == (theirs.bos_token_id,
                                                      theirs.pad_token_id)
    unset = GenerationConfig()  # transformers 5 leaves these None: its defaults are ours
    for field in ("do_sample", "top_k", "temperature", "top_p", "max_new_tokens"):
        want = getattr(theirs, field)
        assert getattr(ours, field) == (getattr(unset, field) if want is None else want), field
    if "max_length" in changes:
        assert ours.max_length == theirs.max_length
    # the model gets the same defaults
    model = AutoLlamaModel.from_pretrained(model_dir, "cpu", "f32", progress=False)
    assert model.generation_config == ours
