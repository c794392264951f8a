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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parallel layouts: (model, layout) pairs whose shapes split, from each model's
    config (the tiny fixtures' from their table, without generating them). On the CPU the
    30-layer SmolLM2 is left to the GPU runs (its only layout there, pp2, would cost the
    CI minutes; tp needs a divisor of its 9 heads, 3)."""
    if "layout" not in metafunc.fixturenames:
        return
    from conformance.model.harness import model_names
    from conformance.model.test_model_parallel import LAYOUTS, applicable

    cpu = str(metafunc.config.getoption("--infini-device")).startswith("cpu")
    pairs = []
    for name in model_names(metafunc.config.getoption("--model")):
        if name == "smollm2" and cpu:
            continue
        config = _config_of(name)
        pairs += [(name, lay) for lay, (tp, pp) in LAYOUTS.items() if applicable(config, tp, pp)]
    metafunc.parametrize("model_name,layout", pairs, ids=[f"{m}-{lay}" for m, lay in pairs])


# Cases the CPU run leaves to the GPU runs (too slow for 2 cores): not collected, so they
# are neither planned nor counted; pytest's summary counts them as deselected.
CPU_DESELECTED = ("test_model_logits[smollm2-*-long]",)  # 130 tokens x 30 layers x 3 runs


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not str(config.getoption("--infini-device")).startswith("cpu"):
        return
    from fnmatch import fnmatchcase

    keep, drop = [], []
    for item in items:
        name = item.nodeid.rsplit("::", 1)[-1]
        (drop if any(fnmatchcase(name, p.replace("[", "[[]")) for p in CPU_DESELECTED)
         else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _config_of(name: str) -> dict:
    import json
    from dataclasses import asdict

    if name.startswith("tiny-"):
        from infinilm_fixtures.tiny import VARIANTS

        return asdict(VARIANTS[name.removeprefix("tiny-")])
    if name == "smollm2":
        return {"num_attention_heads": 9, "num_key_value_heads": 3,
                "intermediate_size": 1536, "num_hidden_layers": 30}
    try:
        return json.loads((Path(name).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return {"num_attention_heads": 1, "intermediate_size": 1, "num_hidden_layers": 1}
