"""Property-based tests of config.json (Hypothesis): fuzzed field types, ranges, missing
keys and nesting end in a ConfigError whose message names the file and a field that was
changed, or in a valid config; fuzzed valid tiny architectures load, run to finite logits
of the right shape, and match transformers float32 on CPU; a checkpoint's files replaced
by what is not a regular file (behind chains of links) end in one error naming the path.

Derandomized with a fixed number of examples, so CI runs the same cases every time.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from infinilm_fixtures import special_files
from infinilm_fixtures.tiny import ensure
from infinilm_models import AutoLlamaModel
from infinilm_models.files import MAX_LINK_HOPS
from infinilm_models.models.llama.configuration import (
    SUPPORTED_ROPE_TYPES,
    ConfigError,
    LlamaConfig,
)
from infinilm_models.models.llama.loading import CheckpointError
from infinilm_models.tokenizer import TokenizerError, load_tokenizer

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SOURCE = "fuzz.json"
BASE: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "vocab_size": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "max_position_embeddings": 2048, "tie_word_embeddings": False, "hidden_act": "silu",
    "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
    "bos_token_id": 1, "eos_token_id": 2,
}
FIELDS = sorted({*BASE, "head_dim", "dtype", "rope_scaling", "rope_parameters"})

JSON_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
JSON = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8)
SMALL_INT = st.integers(-3, 300)
NUMBER = st.one_of(st.sampled_from([0, -1, 1, 1e-300, 1e-40, 0.5, 2, 8.0, 1e4, 5e5, 1e308,
                                    math.nan, math.inf, 10**400]), st.floats())
ROPE_KEYS = ["rope_type", "type", "factor", "low_freq_factor", "high_freq_factor",
             "original_max_position_embeddings", "rope_theta", "partial_rotary_factor"]
ROPE_DICT = st.dictionaries(
    st.sampled_from(ROPE_KEYS),
    st.one_of(st.sampled_from(["default", "linear", "llama3", "yarn", "dynamic"]), NUMBER,
              SMALL_INT, JSON),
    max_size=6)
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "rms_norm_eps": NUMBER, "rope_theta": NUMBER,
    "rope_scaling": st.one_of(st.none(), ROPE_DICT, st.dictionaries(
        st.sampled_from(["full_attention", "sliding"]), ROPE_DICT, min_size=1, max_size=2)),
    "rope_parameters": st.one_of(st.none(), ROPE_DICT),
    "tie_word_embeddings": st.one_of(st.booleans(), st.sampled_from([0, 1, "true"])),
    "attention_bias": st.one_of(st.booleans(), st.sampled_from([0, "false"])),
    "mlp_bias": st.one_of(st.booleans(), st.sampled_from([0, "false"])),
    "hidden_act": st.sampled_from(["silu", "gelu", "swish", "SiLU", ""]),
    "dtype": st.sampled_from(["float32", "bf16", "float64", "int8", "fp8", "", "auto"]),
    "torch_dtype": st.sampled_from(["float32", "half", "double", "int4", "Float16"]),
    "model_type": st.sampled_from(["llama", "mistral", "LLaMA", ""]),
    "eos_token_id": st.one_of(SMALL_INT, st.lists(SMALL_INT, max_size=3)),
}
_DROP = object()


@st.composite
def mutated(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """BASE with 1 to 3 fields dropped or replaced by a plausible or arbitrary JSON value."""
    d = dict(BASE)
    keys = draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True))
    for key in keys:
        plausible = PLAUSIBLE.get(key, SMALL_INT)
        value = draw(st.one_of(st.just(_DROP), plausible, JSON))
        if value is _DROP:
            d.pop(key, None)
        else:
            d[key] = value
    return d, keys


def _names_a_changed_field(message: str, keys: list[str]) -> bool:
    # A nested rope key is named with its dict's key ("rope_scaling.factor"); a derived
    # value (head_dim from hidden_size) with the fields it comes from.
    return any(k in message for k in keys) or (
        any(k.startswith("rope") for k in keys) and "rope" in message)


def _check_valid(c: LlamaConfig) -> None:
    assert c.num_attention_heads % c.num_key_value_heads == 0
    assert c.head_dim % 2 == 0 and c.head_dim > 0
    per_layer = 9 + 3 * c.qkv_bias + c.o_bias + 3 * c.mlp_bias
    assert len(c.expected_weight_shapes()) == per_layer * c.num_hidden_layers + 3
    assert c.rope_type in SUPPORTED_ROPE_TYPES
    assert LlamaConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    hash(c)


# Pure Python, about 1 ms an example: more of them for the same time budget.
@settings(FUZZ, max_examples=400)
@given(mutated())
def test_fuzzed_config_dict(case: tuple[dict[str, Any], list[str]]) -> None:
    d, keys = case
    try:
        c = LlamaConfig.from_dict(d, source=SOURCE)
    except ConfigError as e:
        message = str(e)
        assert message.startswith(f"{SOURCE}: "), message
        assert _names_a_changed_field(message, keys), (keys, message)
        return
    _check_valid(c)


@FUZZ
@given(JSON)
def test_fuzzed_config_file_of_any_json(tmp_path_factory: pytest.TempPathFactory,
                                        value: Any) -> None:
    # Whatever a config.json holds, through the public entry point: a ConfigError naming
    # the file (no AttributeError for a list), never anything else.
    model_dir = tmp_path_factory.mktemp("cfg")
    (model_dir / "config.json").write_text(json.dumps(value))
    with pytest.raises(ConfigError) as info:
        AutoLlamaModel.from_pretrained(model_dir, progress=False)
    assert str(info.value).startswith(str(model_dir / "config.json") + ": ")


# --------------------------------------------------------------- valid architectures


@st.composite
def architectures(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    kv = draw(st.integers(1, 3))
    heads = kv * draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([2, 4, 6, 8, 12, 16]))
    explicit_head_dim = draw(st.booleans())
    # With head_dim given, hidden_size need not be heads * head_dim; transformers 5 still
    # requires it to be a multiple of heads (we do not), so the comparison keeps to that.
    hidden = heads * (draw(st.integers(1, 12)) if explicit_head_dim else head_dim)
    d: dict[str, Any] = {
        "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": draw(st.integers(1, 48)),
        "num_hidden_layers": draw(st.integers(1, 2)), "num_attention_heads": heads,
        "num_key_value_heads": draw(st.sampled_from([kv, None])) if kv == heads else kv,
        "vocab_size": draw(st.integers(3, 64)),
        "rms_norm_eps": draw(st.sampled_from([1e-6, 1e-5, 1e-2])),
        "max_position_embeddings": draw(st.sampled_from([8, 64, 4096, 2**31 - 1])),
        "tie_word_embeddings": draw(st.booleans()), "torch_dtype": "float32",
    }
    if explicit_head_dim:
        d["head_dim"] = head_dim
    theta = draw(st.sampled_from([100.0, 10000.0, 500000.0]))
    rope_type = draw(st.sampled_from(["default", "linear", "llama3"]))
    rope: dict[str, Any] = {"rope_type": rope_type}
    if rope_type != "default":
        rope["factor"] = draw(st.sampled_from([1.0, 2.0, 8.0, 32.0]))
    if rope_type == "llama3":
        low = draw(st.sampled_from([0.5, 1.0, 2.0]))
        rope.update(low_freq_factor=low, high_freq_factor=low * draw(st.sampled_from([2, 4])),
                    original_max_position_embeddings=draw(st.sampled_from([4, 16, 64, 8192])))
    if draw(st.booleans()):  # transformers-5 spelling
        d["rope_parameters"] = {**rope, "rope_theta": theta}
    else:
        d["rope_theta"] = theta
        d["rope_scaling"] = None if rope_type == "default" and draw(st.booleans()) else rope
    return d, draw(st.integers(0, 2**32 - 1))


def _write_checkpoint(model_dir: Path, d: dict[str, Any], seed: int) -> None:
    (model_dir / "config.json").write_text(json.dumps(d))
    config = LlamaConfig.from_dict(d)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in config.expected_weight_shapes().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if len(shape) == 1:
            tensors[name] = (1 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        else:
            tensors[name] = (rng.standard_normal(shape) / math.sqrt(shape[-1])).astype(
                np.float32)
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})


@settings(FUZZ, max_examples=40)
@given(architectures(), st.integers(1, 2), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_fuzzed_valid_architecture_runs_like_transformers(
        tmp_path_factory: pytest.TempPathFactory, arch: tuple[dict[str, Any], int], batch: int,
        seq: int, ids_seed: int) -> None:
    import torch
    from transformers import LlamaForCausalLM as HFLlama

    d, seed = arch
    seq = min(seq, d["max_position_embeddings"])
    model_dir = tmp_path_factory.mktemp("arch")
    _write_checkpoint(model_dir, d, seed)
    model = AutoLlamaModel.from_pretrained(model_dir, "cpu", "f32", progress=False)
    ids = np.random.default_rng(ids_seed).integers(0, d["vocab_size"], (batch, seq))
    ours = model.forward(ids, all_logits=True).numpy().astype(np.float64)
    assert ours.shape == (batch, seq, d["vocab_size"])
    assert np.isfinite(ours).all()

    hf = HFLlama.from_pretrained(model_dir, dtype=torch.float32)
    with torch.inference_mode():
        ref = hf(torch.from_numpy(ids)).logits.double().numpy()
    nmse = float(np.mean((ours - ref) ** 2) / max(np.mean(ref ** 2), 1e-300))
    assert nmse <= 1e-10, (d, nmse)


# ------------------------------------------------- paths that are not regular files

# file of a checkpoint -> (fixture, the error that names it)
SPECIAL_TARGETS = {
    "config.json": "gqa", "generation_config.json": "gqa", "model.safetensors": "gqa",
    "tokenizer.json": "gqa", "model.safetensors.index.json": "sharded",
    "model-00002-of-00003.safetensors": "sharded",
}
# /dev/zero is left to the CLI tests (tests/test_hardening_files.py), which read it under a
# memory limit; here /dev/null stands for the devices.
SPECIAL_KINDS = ["regular", *(k for k in special_files.KINDS if k != "dev-zero")]
# links each kind is itself (before the chain in front of it); None: a loop in any case
OWN_LINKS = {"dev-null": 1, "dangling-link": 1, "self-loop": None, "two-link-loop": None,
             "long-chain": None}


def _expected(kind: str, chain: int) -> str | None:
    """The words of the refusal, or None where the file must load."""
    own = OWN_LINKS.get(kind, 0)
    if own is None or chain + own > MAX_LINK_HOPS:
        return "is a symlink loop"
    return None if kind == "regular" else special_files.KINDS[kind]


# About 50 ms an example (a copy of the fixture, a refusal or a load).
@settings(FUZZ, max_examples=100)
@given(st.sampled_from(sorted(SPECIAL_TARGETS)), st.sampled_from(SPECIAL_KINDS),
       st.one_of(st.integers(0, 3), st.integers(38, 44)))
def test_fuzzed_path_that_is_not_a_regular_file(tmp_path_factory: pytest.TempPathFactory,
                                                name: str, kind: str, chain: int) -> None:
    """A checkpoint file replaced by a directory, a pipe, a device, a socket or a link that
    dangles or loops, behind a chain of `chain` symlinks: one error naming the path and
    what it is, never a wait on a pipe; a regular file behind at most 40 links loads."""
    model_dir = tmp_path_factory.mktemp("special") / "m"
    shutil.copytree(ensure(SPECIAL_TARGETS[name]), model_dir)
    path = model_dir / name
    if kind != "regular":
        special_files.make(path, kind)
    elif not path.exists():  # the fixtures have no generation_config.json
        path.write_text('{"max_new_tokens": 3}')
    if chain:
        hidden = path.with_name(name + ".target")
        path.rename(hidden)
        previous = hidden.name
        for i in range(chain - 1):
            (model_dir / f"{name}.hop{i}").symlink_to(previous)
            previous = f"{name}.hop{i}"
        path.symlink_to(previous)
    words = _expected(kind, chain)

    def expired(*_: object) -> None:
        raise TimeoutError(f"{name} ({kind}): still waiting after 20 s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    try:
        if name == "tokenizer.json":
            run = lambda: load_tokenizer(model_dir)  # noqa: E731 - the suite's and the CLI's
        else:
            run = lambda: AutoLlamaModel.from_pretrained(  # noqa: E731
                model_dir, "cpu", "f32", progress=False)
        if words is None:
            assert run() is not None
            return
        with pytest.raises((ConfigError, CheckpointError, TokenizerError)) as info:
            run()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    line = next((x for x in str(info.value).splitlines() if f"{path}" in x), "")
    assert words in line, (name, kind, chain, str(info.value))
