"""Prompts of unequal length: left padding with an attention mask, checked against
transformers' own batched (left-padded) generation and against each prompt alone."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_fixtures.tiny import ensure
from infinilm_models import AutoLlamaModel, generate

PROMPTS = [[5, 17, 33], [9, 8, 7, 6, 5, 4, 3], [40, 41, 42, 43, 44]]
NEW = 8


@pytest.fixture(scope="module", params=["gqa", "mqa"])
def pair(request):
    import torch
    from transformers import LlamaForCausalLM

    path = ensure(request.param)
    ours = AutoLlamaModel.from_pretrained(path, "cpu", "f32", progress=False)
    hf = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32,
                                          attn_implementation="eager").eval()
    return ours, hf


def _padded(prompts, pad=0):
    width = max(map(len, prompts))
    ids = np.full((len(prompts), width), pad, dtype=np.int64)
    mask = np.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):], mask[b, width - len(p):] = p, 1
    return ids, mask


def test_unequal_prompts_generate_like_transformers(pair):
    import torch

    ours, hf = pair
    got = generate(ours, PROMPTS, max_new_tokens=NEW, eos_token_ids=()).tokens
    ids, mask = _padded(PROMPTS)
    with torch.inference_mode():
        want = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                           max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                           pad_token_id=0)[:, ids.shape[1]:].numpy()
    np.testing.assert_array_equal(got, want)  # token ids: integers
    for b, p in enumerate(PROMPTS):  # and each row as if it ran alone
        alone = generate(ours, [p], max_new_tokens=NEW, eos_token_ids=()).tokens[0]
        np.testing.assert_array_equal(got[b], alone)


def test_padded_forward_logits_match_transformers(pair):
    import torch

    from conformance.judge import error_metrics

    ours, hf = pair
    ids, mask = _padded(PROMPTS)
    logits = ours.forward(ids, attention_mask=mask).numpy()[:, -1]
    with torch.inference_mode():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits[:, -1].numpy()
    assert error_metrics(logits, ref)["nmse"] <= 1e-10


@pytest.mark.parametrize("mask, match", [
    ([[1, 1, 1], [1, 1]], "shape"),
    ([[1, 1, 2], [1, 1, 1]], "only 0"),
    ([[0, 0, 0], [1, 1, 1]], "without any token"),
])
def test_attention_mask_errors(pair, mask, match):
    ours, _ = pair
    with pytest.raises(ValueError, match=match):
        ours.forward([[1, 2, 3], [4, 5, 6]], attention_mask=mask)
