"""Fixtures of the model-level checks: checkpoints, prompts, the three runtimes.

Ours is loaded first: a checkpoint this project cannot run is reported in our words (the
file and the field or tensor), as one error, before transformers sees it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# Before InfiniCore is loaded (at the first test): transformers imports pyarrow, scikit-learn
# and CUDA libraries lazily, and late imports of native libraries next to InfiniCore's CUDA
# toolkit have aborted processes on NVIDIA.
import transformers.generation  # noqa: F401

from .harness import hf_model, our_model, resolve_model, torch_device

TEXT = Path(__file__).resolve().parents[2] / "infinilm_fixtures" / "texts" / "perplexity.txt"


@pytest.fixture
def model_path(model_name: str) -> Path:
    return resolve_model(model_name)


@pytest.fixture
def runtimes(model_path: Path, dtype: str, infini_device):
    """(golden, same-dtype reference, ours) for this checkpoint/dtype/device."""
    dev = str(infini_device)
    ours = our_model(str(model_path), dtype, dev)
    golden = hf_model(str(model_path), "f32", "cpu")
    tdev = torch_device(dev)
    ref = golden if (dtype == "f32" and tdev == "cpu") else hf_model(str(model_path), dtype, tdev)
    return golden, ref, ours


def prompt_ids(model_path: Path, batch: int, seq: int, verify=None) -> np.ndarray:
    """Windows of the fixture text tokenized by the checkpoint's own tokenizer (realistic
    token statistics for a trained model); a directory without tokenizer.json gets seeded
    random ids in its vocabulary range instead, and the record says which."""
    tok = model_path / "tokenizer.json"
    if tok.is_file():
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(tok)).encode(TEXT.read_text()).ids
        source = "fixture text, checkpoint tokenizer"
    else:
        import json

        vocab = int(json.loads((model_path / "config.json").read_text())["vocab_size"])
        rng = np.random.default_rng([20261130, vocab])
        ids = rng.integers(0, vocab, 4096).tolist()
        source = f"seeded random ids in [0, {vocab}) (no tokenizer.json)"
    if verify is not None:
        verify.info["prompts"] = source
    if len(ids) < batch * seq:
        ids = ids * (batch * seq // len(ids) + 1)
    return np.array(ids[: batch * seq], dtype=np.int64).reshape(batch, seq)
