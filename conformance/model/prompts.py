"""The token ids the model checks feed both sides: windows of the fixture text, tokenized
by the checkpoint's own tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TEXT = Path(__file__).resolve().parents[2] / "infinilm_fixtures" / "texts" / "perplexity.txt"
# The cache check's prompt: CACHE_PREFIX tokens prefilled, then CACHE_STEPS one-token steps
# (the localization self-tests decode the same shape).
CACHE_PREFIX, CACHE_STEPS = 6, 4


def prompt_ids(model_path: Path, batch: int, seq: int, verify=None) -> np.ndarray:
    """Windows of the fixture text tokenized by the checkpoint's own tokenizer (realistic
    token statistics for a trained model); a directory without tokenizer.json gets seeded
    random ids in its vocabulary range instead, and the record says which."""
    from infinilm_models.files import present
    from infinilm_models.tokenizer import load_tokenizer

    tok = model_path / "tokenizer.json"
    if present(tok):  # there but unusable (a pipe, invalid JSON): an error naming it
        ids = load_tokenizer(tok).encode(TEXT.read_text()).ids
        source = "fixture text, checkpoint tokenizer"
    else:
        from infinilm_models.models.llama.configuration import LlamaConfig

        vocab = LlamaConfig.from_pretrained(model_path).vocab_size
        rng = np.random.default_rng([20261130, vocab])
        ids = rng.integers(0, vocab, 4096).tolist()
        source = f"seeded random ids in [0, {vocab}) (no tokenizer.json)"
    if verify is not None:
        verify.param(prompts=source)
    if len(ids) < batch * seq:
        ids = ids * (batch * seq // len(ids) + 1)
    return np.array(ids[: batch * seq], dtype=np.int64).reshape(batch, seq)
