"""Self-test for infinilm_models.models.llama.configuration: config.json -> LlamaConfig.

Every refused field must say which field, which value and which file; RoPE inverse
frequencies must equal transformers' own; both rope spellings (``rope_scaling`` +
``rope_theta`` and transformers-5 ``rope_parameters``) must read the same; every tiny
fixture checkpoint must load and match its weights' shapes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infinilm_fixtures.tiny import VARIANTS, ensure
from infinilm_models.models.llama.configuration import ConfigError, LlamaConfig

# Everything is local; never let a typo turn into a Hub download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SOURCE = "cfg-under-test.json"

BASE: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
}

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


# Marks a key to remove from BASE, to test missing required fields.
_DROP = object()


def cfg(**overrides: Any) -> dict[str, Any]:
    d = dict(BASE)
    for k, v in overrides.items():
        if v is _DROP:
            d.pop(k, None)
        else:
            d[k] = v
    return d


def llama3_without(key: str) -> dict[str, Any]:
    return {k: v for k, v in LLAMA3.items() if k != key}


# (id, config dict, substrings the message must contain besides the source)
BAD_FIELDS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("heads-not-divisible-by-kv",
     cfg(hidden_size=72, num_attention_heads=9, num_key_value_heads=4),
     ["num_attention_heads (9)", "num_key_value_heads (4)"]),
    ("kv-more-than-heads", cfg(num_key_value_heads=8), ["num_key_value_heads (8)"]),
    ("hidden-zero", cfg(hidden_size=0), ["hidden_size (0)"]),
    ("hidden-negative", cfg(hidden_size=-64), ["hidden_size (-64)"]),
    ("hidden-float", cfg(hidden_size=64.0), ["hidden_size (64.0)"]),
    ("intermediate-zero", cfg(intermediate_size=0), ["intermediate_size (0)"]),
    ("intermediate-negative", cfg(intermediate_size=-1), ["intermediate_size (-1)"]),
    ("layers-zero", cfg(num_hidden_layers=0), ["num_hidden_layers (0)"]),
    ("layers-bool", cfg(num_hidden_layers=True), ["num_hidden_layers (True)"]),
    ("heads-zero", cfg(num_attention_heads=0), ["num_attention_heads (0)"]),
    ("kv-heads-zero", cfg(num_key_value_heads=0), ["num_key_value_heads (0)"]),
    ("kv-heads-string", cfg(num_key_value_heads="2"), ["num_key_value_heads ('2')"]),
    ("vocab-zero", cfg(vocab_size=0), ["vocab_size (0)"]),
    ("vocab-negative", cfg(vocab_size=-5), ["vocab_size (-5)"]),
    ("max-positions-zero", cfg(max_position_embeddings=0), ["max_position_embeddings (0)"]),
    ("max-positions-null", cfg(max_position_embeddings=None), ["max_position_embeddings (None)"]),
    ("head-dim-odd", cfg(head_dim=15), ["head_dim (15)", "even"]),
    ("head-dim-zero", cfg(head_dim=0), ["head_dim (0)"]),
    ("derived-head-dim-odd", cfg(hidden_size=36, num_attention_heads=4, num_key_value_heads=4),
     ["head_dim (9)"]),
    ("hidden-not-divisible-no-head-dim", cfg(hidden_size=66), ["hidden_size (66)",
                                                                "num_attention_heads (4)"]),
    ("rms-eps-zero", cfg(rms_norm_eps=0), ["rms_norm_eps (0)"]),
    ("rms-eps-negative", cfg(rms_norm_eps=-1e-5), ["rms_norm_eps (-1e-05)"]),
    ("rms-eps-nan", cfg(rms_norm_eps=math.nan), ["rms_norm_eps (nan)"]),
    ("rope-theta-zero", cfg(rope_theta=0.0), ["rope_theta (0.0)"]),
    ("rope-theta-negative-in-params",
     cfg(rope_parameters={"rope_type": "default", "rope_theta": -1.0}),
     ["rope_theta (-1.0)"]),
    ("hidden-act-gelu", cfg(hidden_act="gelu"), ["hidden_act ('gelu')", "'silu'"]),
    ("hidden-act-swish", cfg(hidden_act="swish"), ["hidden_act ('swish')", "'silu'"]),
    ("attention-bias-not-bool", cfg(attention_bias="false"), ["attention_bias ('false')"]),
    ("mlp-bias-not-bool", cfg(mlp_bias=1), ["mlp_bias (1)"]),
    # transformers has RoPE types LLaMA's modeling never uses (Gemma's proportional, ...)
    ("rope-type-proportional",
     cfg(rope_scaling={"rope_type": "proportional", "factor": 4.0}),
     ["rope_type ('proportional')", "'default'", "'dynamic'", "'yarn'", "'longrope'",
      "'llama3'"]),
    ("rope-type-old-key-unknown", cfg(rope_scaling={"type": "su", "factor": 2.0}),
     ["rope_type ('su')", "'longrope'"]),
    ("longrope-missing-factors",
     cfg(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4}),
     ["rope_parameters.short_factor", "missing", "short_factor, long_factor"]),
    ("longrope-factors-wrong-length",
     cfg(rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 8,
                       "long_factor": [1.0] * 7, "original_max_position_embeddings": 64}),
     ["rope_scaling.long_factor has 7 entries", "head_dim / 2 = 8"]),
    ("longrope-factor-not-positive",
     cfg(rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 7 + [0.0],
                       "long_factor": [1.0] * 8}),
     ["rope_scaling.short_factor[7] (0.0)"]),
    ("longrope-factor-not-list",
     cfg(rope_scaling={"rope_type": "longrope", "short_factor": 2.0, "long_factor": [1.0] * 8}),
     ["rope_scaling.short_factor (2.0)", "list"]),
    ("yarn-missing-factor",
     cfg(rope_scaling={"rope_type": "yarn", "original_max_position_embeddings": 64}),
     ["rope_scaling.factor", "missing"]),
    ("yarn-attention-factor-negative",
     cfg(rope_scaling={"rope_type": "yarn", "factor": 4.0, "attention_factor": -1.0}),
     ["rope_scaling.attention_factor (-1.0)"]),
    ("yarn-truncate-not-bool",
     cfg(rope_scaling={"rope_type": "yarn", "factor": 4.0, "truncate": "no"}),
     ["rope_scaling.truncate ('no')"]),
    ("yarn-beta-nan",
     cfg(rope_scaling={"rope_type": "yarn", "factor": 4.0, "beta_fast": math.nan}),
     ["rope_scaling.beta_fast (nan)"]),
    ("dynamic-factor-zero", cfg(rope_scaling={"rope_type": "dynamic", "factor": 0}),
     ["rope_scaling.factor (0)"]),
    ("dynamic-factor-missing", cfg(rope_scaling={"type": "dynamic"}),
     ["rope_scaling.factor", "missing"]),
    *[
        (f"llama3-missing-{key}", cfg(rope_scaling=llama3_without(key)),
         [f"rope_scaling.{key}", "missing"])
        for key in ("factor", "low_freq_factor", "high_freq_factor")
    ],
    ("llama3-missing-in-params",
     cfg(rope_parameters={**llama3_without("high_freq_factor"), "rope_theta": 5e5}),
     ["rope_parameters.high_freq_factor", "missing"]),
    ("llama3-high-not-above-low",
     cfg(rope_scaling={**LLAMA3, "low_freq_factor": 4.0, "high_freq_factor": 4.0}),
     ["high_freq_factor (4.0)", "low_freq_factor (4.0)"]),
    ("llama3-factor-negative", cfg(rope_scaling={**LLAMA3, "factor": -8.0}),
     ["rope_scaling.factor (-8.0)"]),
    ("llama3-orig-max-float",
     cfg(rope_scaling={**LLAMA3, "original_max_position_embeddings": 8192.5}),
     ["original_max_position_embeddings (8192.5)"]),
    ("linear-factor-zero", cfg(rope_scaling={"type": "linear", "factor": 0.0}),
     ["rope_scaling.factor (0.0)"]),
    ("linear-factor-negative", cfg(rope_scaling={"rope_type": "linear", "factor": -2}),
     ["rope_scaling.factor (-2)"]),
    ("linear-factor-missing", cfg(rope_scaling={"rope_type": "linear"}),
     ["rope_scaling.factor", "missing"]),
    ("rope-scaling-not-dict", cfg(rope_scaling="linear"), ["rope_scaling ('linear')"]),
    ("rope-nested-per-layer",
     cfg(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e4}}),
     ["rope_parameters", "nested"]),
    ("partial-rotary", cfg(rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                            "partial_rotary_factor": 0.5}),
     ["partial_rotary_factor (0.5)"]),
    ("rope-theta-conflict",
     cfg(rope_theta=1e4, rope_parameters={"rope_type": "default", "rope_theta": 5e5}),
     ["rope_theta (10000.0)", "rope_parameters.rope_theta (500000.0)"]),
    ("rope-spellings-conflict",
     cfg(rope_scaling={"type": "linear", "factor": 2.0},
         rope_parameters={"rope_type": "linear", "factor": 4.0}),
     ["rope_scaling", "rope_parameters", "'factor': 4.0"]),
    ("dtype-float8", cfg(dtype="float8_e4m3fn"), ["dtype ('float8_e4m3fn')", "bfloat16"]),
    ("rope-type-not-str", cfg(rope_scaling={"rope_type": ["llama3"], "factor": 2.0}),
     ["rope_scaling.rope_type (['llama3'])"]),
    # sin/cos of float32 angles beyond float32's range are NaN: every logit would be NaN.
    ("rope-angles-overflow-theta", cfg(rope_theta=1e-40, max_position_embeddings=10**6),
     ["rope_theta (1e-40)", "max_position_embeddings (1000000)", "float32"]),
    ("rope-angles-overflow-factor", cfg(rope_scaling={"rope_type": "linear", "factor": 1e-40}),
     ["rope_scaling.factor (1e-40)", "max_position_embeddings (2048)"]),
    ("dtype-int8", cfg(dtype="int8"), ["dtype ('int8')"]),
    ("torch-dtype-bad", cfg(torch_dtype="fp8"), ["dtype ('fp8')"]),
    ("dtype-not-str", cfg(dtype=32), ["dtype (32)"]),
    ("tie-string", cfg(tie_word_embeddings="true"), ["tie_word_embeddings ('true')"]),
    ("tie-int", cfg(tie_word_embeddings=1), ["tie_word_embeddings (1)"]),
    ("model-type-mistral", cfg(model_type="mistral"), ["model_type ('mistral')", "'llama'"]),
    ("eos-negative", cfg(eos_token_id=-1), ["eos_token_id (-1)"]),
    ("eos-list-bad-item", cfg(eos_token_id=[2, "x"]), ["eos_token_id ('x')"]),
    ("bos-float", cfg(bos_token_id=1.0), ["bos_token_id (1.0)"]),
    *[
        (f"missing-{key}", cfg(**{key: _DROP}), [key, "missing"])
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "vocab_size")
    ],
]


@pytest.mark.parametrize(("d", "expected"), [(d, e) for _, d, e in BAD_FIELDS],
                         ids=[i for i, _, _ in BAD_FIELDS])
def test_bad_field_is_refused_naming_field_value_and_source(
    d: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        LlamaConfig.from_dict(d, source=SOURCE)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: "), message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_bad_field_from_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg(num_attention_heads=9, num_key_value_heads=4,
                                   hidden_size=72)))
    with pytest.raises(ConfigError, match=r"config\.json: num_attention_heads \(9\) must be "
                                          r"divisible by num_key_value_heads \(4\)") as info:
        LlamaConfig.from_pretrained(tmp_path)
    assert str(path) in str(info.value)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_direct_construction_is_validated_too() -> None:
    kwargs = dict(BASE)
    with pytest.raises(ConfigError, match=r"hidden_act \('relu'\)"):
        LlamaConfig(**kwargs, hidden_act="relu")
    with pytest.raises(ConfigError, match=r"rope_type \('proportional'\)"):
        LlamaConfig(**kwargs, rope_scaling={"rope_type": "proportional", "factor": 2.0})
    c = LlamaConfig(**kwargs, rope_scaling={"type": "linear", "factor": 2, "extra": 1})
    assert dict(c.rope_scaling) == {"rope_type": "linear", "factor": 2.0}


# ------------------------------------------------------------------------------ files


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"hidden_size": 64,,}')
    with pytest.raises(ConfigError, match="invalid JSON") as info:
        LlamaConfig.from_pretrained(path)
    assert str(path) in str(info.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as info:
        LlamaConfig.from_pretrained(tmp_path)  # a directory without config.json
    assert str(tmp_path / "config.json") in str(info.value)
    missing = tmp_path / "nope" / "config.json"
    with pytest.raises(ConfigError, match="not found") as info:
        LlamaConfig.from_pretrained(missing)
    assert str(missing) in str(info.value)


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b"\xff\xfe{not utf-8")
    with pytest.raises(ConfigError, match="cannot read") as info:
        LlamaConfig.from_pretrained(path)
    assert str(path) in str(info.value)


def test_json_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("[1, 2, 3]")
    with pytest.raises(ConfigError, match="JSON object") as info:
        LlamaConfig.from_pretrained(path)
    assert str(path) in str(info.value)


# A SmolLM2-135M config as transformers 5 writes it: `rope_parameters` and a repeated
# top-level `rope_theta`, both `dtype` and `torch_dtype`, and many keys LLaMA ignores.
SMOLLM2_STYLE = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 1, "dtype": "float32", "eos_token_id": 2, "head_dim": 64,
    "hidden_act": "silu", "hidden_size": 576, "id2label": {"0": "LABEL_0"},
    "initializer_range": 0.02, "intermediate_size": 1536, "max_position_embeddings": 8192,
    "mlp_bias": False, "model_type": "llama", "num_attention_heads": 9,
    "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2, "pretraining_tp": 1,
    "rms_norm_eps": 9.999999747378752e-06,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "rope_theta": 100000.0, "tie_word_embeddings": True, "torch_dtype": "float32",
    "transformers_version": "5.24.0", "use_cache": True, "vocab_size": 49152,
}


def test_smollm2_style_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(SMOLLM2_STYLE))
    for where in (tmp_path, path, str(path)):
        c = LlamaConfig.from_pretrained(where)
        assert c.source == str(path)
        assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (
            576, 9, 3, 64)
        assert c.rope_theta == 1e5 and c.rope_type == "default" and c.rope_scaling is None
        assert c.tie_word_embeddings is True and c.dtype == "float32"
        assert c.eos_token_ids == (2,) and c.bos_token_id == 1


# ---------------------------------------------------------------- defaults and values


def test_defaults() -> None:
    c = LlamaConfig.from_dict({k: v for k, v in BASE.items()
                               if k not in ("num_key_value_heads", "model_type")})
    assert c.num_key_value_heads == c.num_attention_heads == 4
    assert c.head_dim == 64 // 4
    assert c.rms_norm_eps == 1e-6 and c.rope_theta == 10000.0 and c.rope_scaling is None
    assert c.rope_type == "default" and c.rope_attention_scaling == 1.0
    assert c.max_position_embeddings == 2048 and c.tie_word_embeddings is False
    assert c.hidden_act == "silu" and c.attention_bias is False and c.mlp_bias is False
    assert c.dtype is None and c.bos_token_id is None and c.eos_token_ids == ()
    assert c.model_type == "llama" and c.source == "<dict>"


def test_nulls_mean_derive_like_hf() -> None:
    c = LlamaConfig.from_dict(cfg(num_key_value_heads=None, head_dim=None, rope_scaling=None,
                                  rope_parameters=None, dtype=None, torch_dtype="bfloat16"))
    assert (c.num_key_value_heads, c.head_dim, c.rope_type, c.dtype) == (
        4, 16, "default", "bfloat16")


@pytest.mark.parametrize(("given", "canonical"), [
    ("float32", "float32"), ("fp32", "float32"), ("f32", "float32"), ("float", "float32"),
    ("float16", "float16"), ("fp16", "float16"), ("f16", "float16"), ("half", "float16"),
    ("bfloat16", "bfloat16"), ("bf16", "bfloat16"), ("BFloat16", "bfloat16"),
])
def test_dtype_aliases(given: str, canonical: str) -> None:
    assert LlamaConfig.from_dict(cfg(dtype=given)).dtype == canonical
    assert LlamaConfig.from_dict(cfg(torch_dtype=given)).dtype == canonical


def test_dtype_preferred_over_torch_dtype() -> None:
    assert LlamaConfig.from_dict(cfg(dtype="bfloat16", torch_dtype="float32")).dtype == "bfloat16"


@pytest.mark.parametrize(("given", "canonical"), [
    ("float64", "float64"), ("fp64", "float64"), ("f64", "float64"), ("double", "float64"),
])
def test_float64_storage_is_accepted(given: str, canonical: str) -> None:
    # transformers loads a float64 checkpoint; the model computes it in f32.
    assert LlamaConfig.from_dict(cfg(torch_dtype=given)).dtype == canonical


def test_rope_angles_at_the_float32_edge() -> None:
    # 2^31 - 1 positions at theta 1e4 are fine (angles up to ~2^31); the bound is f32's.
    c = LlamaConfig.from_dict(cfg(max_position_embeddings=2**31 - 1))
    assert c.max_position_embeddings == 2**31 - 1
    LlamaConfig.from_dict(cfg(rope_scaling={"rope_type": "linear", "factor": 1e-20}))


@pytest.mark.parametrize(("eos", "ids"), [(2, (2,)), ([2, 7], (2, 7)), (None, ()), ([], ())])
def test_eos_token_ids(eos: Any, ids: tuple[int, ...]) -> None:
    c = LlamaConfig.from_dict(cfg(eos_token_id=eos))
    assert c.eos_token_ids == ids
    hash(c)  # a list would make the frozen config unhashable


def test_unknown_keys_ignored() -> None:
    assert LlamaConfig.from_dict(cfg(foo=1, use_cache=False, quantization_config=None)) == (
        LlamaConfig.from_dict(cfg()))


def test_frozen_hashable_equal_regardless_of_source() -> None:
    a = LlamaConfig.from_dict(cfg(rope_scaling=LLAMA3), source="a.json")
    b = LlamaConfig.from_dict(cfg(rope_scaling=LLAMA3), source="b.json")
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.hidden_size = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        a.rope_scaling["factor"] = 2.0  # type: ignore[index]


def test_to_dict_is_json_and_round_trips() -> None:
    a = LlamaConfig.from_dict(cfg(rope_parameters={**LLAMA3, "rope_theta": 5e5},
                                  eos_token_id=[2, 3], dtype="bf16"), source="x")
    d = json.loads(json.dumps(a.to_dict()))
    assert d["rope_scaling"] == LLAMA3 and d["rope_theta"] == 5e5
    assert d["eos_token_id"] == [2, 3] and d["dtype"] == "bfloat16" and d["source"] == "x"
    assert LlamaConfig.from_dict(d) == a


# -------------------------------------------------------------------------------- RoPE

# (id, rope keys in the older spelling, the same in the transformers-5 spelling)
SPELLINGS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("default-implicit", {}, {"rope_parameters": {"rope_type": "default",
                                                   "rope_theta": 10000.0}}),
    ("default", {"rope_theta": 5e5, "rope_scaling": None},
     {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}),
    ("default-explicit-old", {"rope_theta": 5e5, "rope_scaling": {"type": "default"}},
     {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}),
    ("linear-type-key", {"rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 4.0}},
     {"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}}),
    ("llama3", {"rope_theta": 5e5, "rope_scaling": LLAMA3},
     {"rope_parameters": {**LLAMA3, "rope_theta": 5e5}}),
    ("llama3-theta-repeated", {"rope_theta": 5e5, "rope_scaling": LLAMA3},
     {"rope_theta": 5e5, "rope_parameters": {**LLAMA3, "rope_theta": 5e5}}),
    ("llama3-theta-outside", {"rope_theta": 5e5, "rope_scaling": LLAMA3},
     {"rope_theta": 5e5, "rope_parameters": LLAMA3}),
    ("both-agree", {"rope_theta": 5e5, "rope_scaling": LLAMA3},
     {"rope_theta": 5e5, "rope_scaling": LLAMA3,
      "rope_parameters": {**LLAMA3, "rope_theta": 5e5}}),
]


@pytest.mark.parametrize(("old", "new"), [(o, n) for _, o, n in SPELLINGS],
                         ids=[i for i, _, _ in SPELLINGS])
def test_both_rope_spellings_parse_equal(old: dict[str, Any], new: dict[str, Any]) -> None:
    a = LlamaConfig.from_dict(cfg(**old))
    b = LlamaConfig.from_dict(cfg(**new))
    assert a == b
    assert a.to_dict() == b.to_dict()
    np.testing.assert_array_equal(a.rope_inv_freq(), b.rope_inv_freq())


def _hf_config(d: dict[str, Any]) -> Any:
    from transformers import LlamaConfig as HFLlamaConfig

    return HFLlamaConfig.from_dict(dict(d))


@pytest.mark.parametrize(("old", "new"), [(o, n) for _, o, n in SPELLINGS],
                         ids=[i for i, _, _ in SPELLINGS])
def test_rope_reading_matches_transformers(old: dict[str, Any], new: dict[str, Any]) -> None:
    for spelling in (old, new):
        d = cfg(**spelling)
        ours = LlamaConfig.from_dict(d)
        hf = dict(_hf_config(d).rope_parameters)
        assert ours.rope_type == hf.pop("rope_type")
        assert ours.rope_theta == hf.pop("rope_theta")
        hf.pop("type", None)
        assert dict(ours.rope_scaling or {}) == (
            {"rope_type": ours.rope_type, **hf} if hf else {})


# (id, config dict) for the inverse-frequency comparison with transformers.
ROPE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("default-theta1e4-hd16", cfg()),
    ("default-theta5e5-hd128",
     cfg(hidden_size=256, num_attention_heads=2, num_key_value_heads=1, rope_theta=5e5)),
    ("default-headdim-decoupled", cfg(head_dim=32, rope_theta=1e5)),
    ("default-rope-parameters",
     cfg(head_dim=24, rope_parameters={"rope_type": "default", "rope_theta": 123456.0})),
    ("linear-old", cfg(rope_theta=1e4, rope_scaling={"type": "linear", "factor": 4.0})),
    ("linear-new", cfg(head_dim=32,
                       rope_parameters={"rope_type": "linear", "factor": 2.5, "rope_theta": 5e4})),
    ("llama3-fixture", cfg(head_dim=16, rope_theta=500000.0, max_position_embeddings=256,
                           rope_scaling=dict(VARIANTS["llama3rope"].rope_scaling))),
    ("llama3.1-8b", cfg(hidden_size=256, num_attention_heads=2, num_key_value_heads=1,
                        rope_theta=500000.0, max_position_embeddings=131072,
                        rope_scaling=LLAMA3)),
    ("llama3.2-1b-new", cfg(head_dim=64, max_position_embeddings=131072, rope_parameters={
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192, "rope_theta": 500000.0})),
    ("dynamic", cfg(head_dim=16, max_position_embeddings=64,
                    rope_scaling={"type": "dynamic", "factor": 2.0})),
    ("yarn", cfg(head_dim=32, max_position_embeddings=256, rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
        "rope_theta": 1e4})),
    ("yarn-mscale-beta-notruncate", cfg(head_dim=128, max_position_embeddings=4096,
                                        rope_scaling={
        "rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
        "mscale": 0.707, "mscale_all_dim": 0.707, "beta_fast": 16, "beta_slow": 2,
        "truncate": False})),
    ("yarn-attention-factor", cfg(head_dim=16, max_position_embeddings=1024, rope_scaling={
        "rope_type": "yarn", "factor": 8.0, "attention_factor": 0.75})),
    ("longrope", cfg(head_dim=16, max_position_embeddings=256, rope_scaling=dict(
        VARIANTS["longrope"].rope_scaling))),
    ("longrope-no-factor", cfg(head_dim=8, max_position_embeddings=4096, rope_parameters={
        "rope_type": "longrope", "short_factor": [1.0, 1.2, 1.5, 2.0],
        "long_factor": [1.0, 2.0, 4.0, 8.0], "original_max_position_embeddings": 1024,
        "rope_theta": 1e4})),
]


@pytest.mark.parametrize("d", [d for _, d in ROPE_CASES], ids=[i for i, _ in ROPE_CASES])
def test_rope_inv_freq_is_bit_equal_to_transformers(d: dict[str, Any]) -> None:
    """Every type, computed as transformers computes it in float32, step by step; dynamic
    and longrope also for forwards past their original length."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from infinilm_models.models.llama.rope import attention_factor, inv_freq

    ours = LlamaConfig.from_dict(d)
    hf = _hf_config(d)
    rotary = LlamaRotaryEmbedding(config=hf)
    assert np.array_equal(inv_freq(ours), rotary.inv_freq.numpy())
    assert attention_factor(ours) == rotary.attention_scaling
    if ours.rope_type in ("dynamic", "longrope"):
        for length in (65, 300, 5000):
            seq = torch.tensor(length) if ours.rope_type == "dynamic" else length
            ref, _ = ROPE_INIT_FUNCTIONS[ours.rope_type](hf, None, seq_len=seq)
            assert np.array_equal(inv_freq(ours, length), ref.numpy()), length


@pytest.mark.parametrize("d", [d for _, d in ROPE_CASES], ids=[i for i, _ in ROPE_CASES])
def test_rope_inv_freq_matches_transformers(d: dict[str, Any]) -> None:
    import torch
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    ours = LlamaConfig.from_dict(d)
    inv = ours.rope_inv_freq()
    assert inv.dtype == np.float64 and inv.shape == (ours.head_dim // 2,)

    rotary = LlamaRotaryEmbedding(config=_hf_config(d))
    assert rotary.rope_type == ours.rope_type
    ref = rotary.inv_freq
    assert ref.dtype == torch.float32
    # transformers computes in float32, so agreement is to float32 precision only.
    np.testing.assert_allclose(inv, ref.double().numpy(), rtol=1e-6, atol=0)
    assert rotary.attention_scaling == ours.rope_attention_scaling


@pytest.mark.parametrize("d", [d for i, d in ROPE_CASES if not i.startswith("default")],
                         ids=[i for i, _ in ROPE_CASES if not i.startswith("default")])
def test_rope_init_functions_agree(d: dict[str, Any]) -> None:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    ours = LlamaConfig.from_dict(d)
    ref, scaling = ROPE_INIT_FUNCTIONS[ours.rope_type](_hf_config(d), device=None)
    np.testing.assert_allclose(ours.rope_inv_freq(), ref.double().numpy(), rtol=1e-6, atol=0)
    assert scaling == ours.rope_attention_scaling


def test_llama3_fixture_covers_all_three_bands() -> None:
    # Otherwise the comparison above could pass with the smoothing branch never taken.
    c = LlamaConfig.from_dict(dict(ROPE_CASES[6][1]))
    plain = LlamaConfig.from_dict(cfg(head_dim=16, rope_theta=500000.0)).rope_inv_freq()
    scaled = c.rope_inv_freq()
    factor = c.rope_scaling["factor"]
    kept = np.isclose(scaled, plain, rtol=1e-15, atol=0)
    divided = np.isclose(scaled, plain / factor, rtol=1e-15, atol=0)
    smoothed = ~kept & ~divided
    assert kept.any() and divided.any() and smoothed.any(), (kept, divided)
    assert np.all((scaled[smoothed] < plain[smoothed])
                  & (scaled[smoothed] > plain[smoothed] / factor))


def test_rope_inv_freq_closed_form() -> None:
    c = LlamaConfig.from_dict(cfg(head_dim=8, rope_theta=10000.0,
                                  rope_scaling={"type": "linear", "factor": 2.0}))
    expected = np.array([1.0, 10000.0 ** -0.25, 10000.0 ** -0.5, 10000.0 ** -0.75]) / 2.0
    # float32 values, as transformers computes them: within float32's rounding
    np.testing.assert_allclose(c.rope_inv_freq(), expected, rtol=2.0 ** -23, atol=0)
    assert np.array_equal(c.rope_inv_freq(), c.rope_inv_freq().astype(np.float32))


# ---------------------------------------------------------------------- weight shapes


def test_expected_weight_shapes_match_transformers_model() -> None:
    import torch
    from transformers import LlamaForCausalLM

    d = cfg(head_dim=24, intermediate_size=96, num_hidden_layers=3, vocab_size=300)
    with torch.device("meta"):
        model = LlamaForCausalLM(_hf_config(d))
    hf = {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)}
    assert LlamaConfig.from_dict(d).expected_weight_shapes() == hf


def test_expected_weight_shapes_are_lazy() -> None:
    # A config may claim any number of layers; nothing per layer is built up front.
    shapes = LlamaConfig.from_dict(cfg(num_hidden_layers=10**12)).expected_weight_shapes()
    assert len(shapes) == 9 * 10**12 + 3
    assert shapes[f"model.layers.{10**12 - 1}.mlp.down_proj.weight"] == (64, 128)
    for absent in (f"model.layers.{10**12}.mlp.down_proj.weight",
                   "model.layers.01.mlp.down_proj.weight", "model.layers.-1.mlp.up_proj.weight",
                   "model.layers.0.mlp.bias", "model.layers..mlp.up_proj.weight", 3):
        assert absent not in shapes
        assert shapes.get(absent) is None
    first = []
    for name in shapes:
        first.append(name)
        if len(first) == 11:
            break
    assert first[0] == "model.embed_tokens.weight"
    assert first[10] == "model.layers.1.input_layernorm.weight"


def test_expected_weight_shapes_lists_lm_head_even_when_tied() -> None:
    shapes = LlamaConfig.from_dict(cfg(tie_word_embeddings=True)).expected_weight_shapes()
    assert shapes["lm_head.weight"] == shapes["model.embed_tokens.weight"] == (256, 64)
    assert list(shapes)[0] == "model.embed_tokens.weight"
    assert list(shapes)[-2:] == ["model.norm.weight", "lm_head.weight"]


# ----------------------------------------------------------------------- tiny fixtures


def _checkpoint_shapes(ckpt: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(ckpt.glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


@pytest.mark.parametrize("name", list(VARIANTS))
def test_tiny_fixture_loads(name: str) -> None:
    from infinilm_models.models.auto import load_config, model_class

    spec = VARIANTS[name]
    ckpt = ensure(name)
    c = load_config(ckpt)
    assert c.model_type == spec.family and type(c) is model_class(ckpt).config_class
    assert c.source == str(ckpt / "config.json")
    assert c == type(c).from_pretrained(ckpt / "config.json")
    for f in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
              "rms_norm_eps", "rope_theta", "max_position_embeddings"):
        assert getattr(c, f) == getattr(spec, f), f
    want = {k: tuple(v) if isinstance(v, list) else v
            for k, v in (spec.rope_scaling or {}).items()}
    if c.rope_type in ("llama3", "yarn", "longrope"):
        want.setdefault("original_max_position_embeddings", spec.max_position_embeddings)
    assert dict(c.rope_scaling or {}) == want
    assert c.dtype == "float32" and c.bos_token_id == 1 and c.eos_token_ids == (2,)

    expected = c.expected_weight_shapes()
    on_disk = _checkpoint_shapes(ckpt)
    if c.tie_word_embeddings:
        assert "lm_head.weight" not in on_disk
        on_disk["lm_head.weight"] = on_disk["model.embed_tokens.weight"]
    assert expected == on_disk
