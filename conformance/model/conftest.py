"""Fixtures of the model-level checks: checkpoints, prompts, the three runtimes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# Before InfiniCore is loaded (at the first test): transformers imports pyarrow, scikit-learn
# and CUDA libraries lazily, and late imports of native libraries next to InfiniCore's CUDA
# toolkit have aborted processes on NVIDIA.
import transformers.generation  # noqa: F401

from .harness import hf_model, our_model, resolve_model, torch_device


@pytest.fixture
def model_path(model_name: str) -> Path:
    return resolve_model(model_name)


@pytest.fixture
def runtimes(model_path: Path, dtype: str, infini_device):
    """(golden, same-dtype reference, ours) for this checkpoint/dtype/device."""
    dev = str(infini_device)
    golden = hf_model(str(model_path), "f32", "cpu")
    tdev = torch_device(dev)
    ref = golden if (dtype == "f32" and tdev == "cpu") else hf_model(str(model_path), dtype, tdev)
    return golden, ref, our_model(str(model_path), dtype, dev)


def prompt_ids(model_path: Path, batch: int, seq: int) -> np.ndarray:
    """Windows of the fixture text tokenized by the checkpoint's own tokenizer: realistic
    token statistics for a trained model, and deterministic."""
    from tokenizers import Tokenizer

    text = (Path(__file__).resolve().parents[2] / "infinilm_fixtures" / "texts" / "perplexity.txt")
    ids = Tokenizer.from_file(str(model_path / "tokenizer.json")).encode(
        text.read_text()).ids
    if len(ids) < batch * seq:
        ids = ids * (batch * seq // len(ids) + 1)
    return np.array(ids[: batch * seq], dtype=np.int64).reshape(batch, seq)
