"""LLaMA model configuration, read from a Hugging Face ``config.json`` and validated.

Everything this implementation cannot run faithfully is refused here, at load time, with
a message naming the file, the field and the offending value, instead of surfacing later
as a shape error or, worse, as silently different numbers.

Rope parameters come in two spellings and both are read:

* older: a ``rope_scaling`` dict (``type`` or ``rope_type`` plus scaling keys) next to
  a top-level ``rope_theta``;
* transformers 5: a ``rope_parameters`` dict holding ``rope_type``, ``rope_theta`` and
  the scaling keys (``rope_theta`` may still be repeated at the top level).

Precedence follows transformers (a non-empty ``rope_scaling`` replaces
``rope_parameters``; a ``rope_theta`` inside the dict beats the top-level one), except
that where two spellings are both given and disagree the file is refused: picking one
silently would run a different model than one of them describes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from ...errors import ConfigError  # defined there for every family; re-exported here
from ...files import present, read_text

__all__ = [
    "ConfigError", "LlamaConfig", "SUPPORTED_DTYPES", "SUPPORTED_ROPE_TYPES", "WeightShapes",
]

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")

# rope_type -> (keys it needs, keys it may have), as transformers' validators list them;
# anything else in the dict is ignored, as in transformers.
_ROPE_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "default": ((), ()),
    "linear": (("factor",), ()),
    "dynamic": (("factor",), ()),
    "yarn": (("factor",), ("original_max_position_embeddings", "attention_factor", "beta_fast",
                           "beta_slow", "mscale", "mscale_all_dim", "truncate")),
    "longrope": (("short_factor", "long_factor"),
                 ("original_max_position_embeddings", "factor", "attention_factor")),
    "llama3": (("factor", "low_freq_factor", "high_freq_factor"),
               ("original_max_position_embeddings",)),
}
# Types whose pretraining length transformers fills in when the dict lacks it: the
# top-level original_max_position_embeddings if config.json has one, else
# max_position_embeddings (configuration_utils' standardize_rope_params).
_ORIGINAL_LENGTH_TYPES = ("llama3", "yarn", "longrope")

# Canonical dtype names are the torch/HF spellings, so `DType.parse` and HF both read them.
# The config's dtype is how the weights are stored; float64 is accepted (transformers loads
# it) and computed in float32, the widest dtype the model runs in.
_DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float64": "float64", "fp64": "float64", "f64": "float64", "double": "float64",
}
SUPPORTED_DTYPES = ("float32", "float16", "bfloat16", "float64")
# The widest finite float32: cos/sin tables are computed from float32 angles, as in HF.
_F32_MAX_LOG = math.log(float(np.finfo(np.float32).max))

_REQUIRED_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)

_DEFAULT_ROPE_THETA = 10000.0

# transformers' LlamaConfig plans, in its spelling: how each projection is split across
# tensor-parallel ranks ("colwise": the output features, "rowwise": the input features,
# followed by an all-reduce of the partial outputs) and which modules form the pipeline.
DEFAULT_TP_PLAN: Mapping[str, str] = MappingProxyType({
    "layers.*.self_attn.q_proj": "colwise",
    "layers.*.self_attn.k_proj": "colwise",
    "layers.*.self_attn.v_proj": "colwise",
    "layers.*.self_attn.o_proj": "rowwise",
    "layers.*.mlp.gate_proj": "colwise",
    "layers.*.mlp.up_proj": "colwise",
    "layers.*.mlp.down_proj": "rowwise",
})
DEFAULT_PP_PLAN: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = MappingProxyType({
    "embed_tokens": (("input_ids",), ("inputs_embeds",)),
    "layers": (("hidden_states", "attention_mask"), ("hidden_states",)),
    "norm": (("hidden_states",), ("hidden_states",)),
})
TP_STYLES = ("colwise", "rowwise")


def _fail(source: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {message}")


def _is_int(value: Any) -> bool:
    # JSON `true` arrives as bool, which Python counts as an int; it is never a size.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(source: str, name: str, value: Any) -> int:
    if not _is_int(value) or value <= 0:
        raise _fail(source, f"{name} ({value!r}) must be a positive integer")
    return int(value)


def _positive_float(source: str, name: str, value: Any) -> float:
    try:
        # float() of a JSON integer beyond 1e308 raises OverflowError: not finite either.
        ok = _is_number(value) and math.isfinite(float(value)) and value > 0
    except OverflowError:
        ok = False
    if not ok:
        raise _fail(source, f"{name} ({value!r}) must be a positive finite number")
    return float(value)


def _dtype(source: str, name: str, value: Any) -> str:
    """Canonical storage dtype name; ``name`` is the key it was read from."""
    key = value.strip().lower() if isinstance(value, str) else None
    if key not in _DTYPE_ALIASES:
        raise _fail(source, f"{name} ({value!r}) is not supported; expected one of "
                            f"{', '.join(SUPPORTED_DTYPES)} (or fp32/f32, fp16/f16/half, "
                            "bf16, fp64/f64/double)")
    return _DTYPE_ALIASES[key]


def _bool(source: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(source, f"{name} ({value!r}) must be a boolean (true/false)")
    return value


def _unsupported_flag(source: str, name: str, value: Any, what: str) -> bool:
    if _bool(source, name, value):
        raise _fail(source, f"{name} ({value!r}) is not supported by this implementation ({what})")
    return False


def _token_id(source: str, name: str, value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise _fail(source, f"{name} ({value!r}) must be a non-negative integer token id")
    return int(value)


def _rope_value(source: str, rope_type: str, name: str, key: str, value: Any) -> Any:
    """One scaling key of a rope dict, validated (`name` as the file spells it)."""
    if key == "original_max_position_embeddings":
        return _positive_int(source, name, value)
    if key == "truncate":
        return _bool(source, name, value)
    if key in ("short_factor", "long_factor"):
        if not isinstance(value, (list, tuple)) or not value:
            raise _fail(source, f"{name} ({value!r}) must be a non-empty list of positive "
                                "numbers")
        return tuple(_positive_float(source, f"{name}[{i}]", v) for i, v in enumerate(value))
    if key in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
        # transformers reads these with `or` (0 means its default): any finite number.
        if not _is_number(value) or not math.isfinite(float(value)):
            raise _fail(source, f"{name} ({value!r}) must be a finite number")
        return float(value)
    return _positive_float(source, name, value)


def _normalize_rope(
    source: str, rope: Mapping[str, Any] | None, rope_theta: float, label: str = "rope_scaling"
) -> Mapping[str, Any] | None:
    """Validate a rope dict; return a read-only canonical copy, or None for plain RoPE.

    ``label`` is the spelling the dict came from, so messages name the key in the file.
    """
    if rope is None:
        return None
    if not isinstance(rope, Mapping):
        raise _fail(source, f"{label} ({rope!r}) must be a dict or null")
    if not rope:
        return None
    # transformers reads `rope_type` first and falls back to the older `type`.
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if not isinstance(rope_type, str) or rope_type not in _ROPE_KEYS:
        raise _fail(
            source,
            f"{label}.rope_type ({rope_type!r}) is not supported; supported: "
            f"{', '.join(repr(t) for t in SUPPORTED_ROPE_TYPES)}",
        )
    if "rope_theta" in rope and rope["rope_theta"] is not None:
        inner = _positive_float(source, f"{label}.rope_theta", rope["rope_theta"])
        if inner != rope_theta:
            raise _fail(
                source, f"rope_theta ({rope_theta!r}) conflicts with {label}.rope_theta ({inner!r})"
            )
    partial = rope.get("partial_rotary_factor")
    if partial is not None and partial != 1.0:
        raise _fail(
            source,
            f"{label}.partial_rotary_factor ({partial!r}) is not supported by this implementation "
            "(LLaMA rotates the whole head)",
        )
    if rope_type == "default":
        return None

    required, optional = _ROPE_KEYS[rope_type]
    out: dict[str, Any] = {"rope_type": rope_type}
    for key in required + optional:
        name = f"{label}.{key}"
        if key not in rope or rope[key] is None:
            if key in required:
                raise _fail(source, f"{name} is missing; rope_type {rope_type!r} requires "
                                    f"{', '.join(required)}")
            continue
        out[key] = _rope_value(source, rope_type, name, key, rope[key])
    if rope_type == "llama3" and out["high_freq_factor"] <= out["low_freq_factor"]:
        # Equal factors divide by zero in the smoothing term; smaller inverts the bands.
        raise _fail(
            source,
            f"{label}.high_freq_factor ({out['high_freq_factor']!r}) must be greater "
            f"than {label}.low_freq_factor ({out['low_freq_factor']!r})",
        )
    return MappingProxyType(out)


def _same_rope(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    return (dict(a) if a else None) == (dict(b) if b else None)


@dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    """The architecture of one LLaMA checkpoint, HF field names, validated on construction.

    ``rope_scaling`` is held in canonical form: None for plain RoPE, else a read-only
    mapping with ``rope_type`` and exactly the keys that type has (``rope_theta`` lives in
    its own field; llama3/yarn/longrope always hold ``original_max_position_embeddings``).

    The LLaMA blocks read the architecture through the properties below (`qkv_bias`,
    `o_bias`, `qk_norm`, `layer_window`); a family that shares LLaMA's blocks (models/qwen2,
    qwen3, mistral) is a subclass that reads its own config.json fields and answers them.
    """

    MODEL_TYPE: ClassVar[str] = "llama"

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = _DEFAULT_ROPE_THETA
    rope_scaling: Mapping[str, Any] | None = field(default=None, hash=False)
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    dtype: str | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    model_type: str = "llama"
    base_model_tp_plan: Mapping[str, str] = field(default_factory=lambda: DEFAULT_TP_PLAN,
                                                  hash=False)
    base_model_pp_plan: Mapping[str, Any] = field(default_factory=lambda: DEFAULT_PP_PLAN,
                                                  hash=False)
    # Only for messages: two configs with the same contents are equal wherever they came from.
    source: str = field(default="<dict>", compare=False)

    def __post_init__(self) -> None:
        src = self.source

        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.model_type != self.MODEL_TYPE:
            raise _fail(src, f"model_type ({self.model_type!r}) is not supported; "
                             f"expected {self.MODEL_TYPE!r}")
        for name in _REQUIRED_KEYS + ("max_position_embeddings",):
            put(name, _positive_int(src, name, getattr(self, name)))

        heads = self.num_attention_heads
        if self.num_key_value_heads is None:
            put("num_key_value_heads", heads)
        kv = _positive_int(src, "num_key_value_heads", self.num_key_value_heads)
        put("num_key_value_heads", kv)
        if heads % kv:
            raise _fail(src, f"num_attention_heads ({heads}) must be divisible by "
                             f"num_key_value_heads ({kv})")

        derived = ""
        if self.head_dim is None:
            if self.hidden_size % heads:
                # The derived head_dim would silently drop part of the hidden state.
                raise _fail(src, f"hidden_size ({self.hidden_size}) must be divisible by "
                                 f"num_attention_heads ({heads}) when head_dim is not given")
            put("head_dim", self.hidden_size // heads)
            derived = (f" (derived as hidden_size ({self.hidden_size}) / num_attention_heads "
                       f"({heads}), head_dim not being given)")
        head_dim = _positive_int(src, "head_dim", self.head_dim)
        if head_dim % 2:
            raise _fail(src, f"head_dim ({head_dim}) must be even: RoPE rotates pairs of "
                             f"channels{derived}")
        put("head_dim", head_dim)

        put("rms_norm_eps", _positive_float(src, "rms_norm_eps", self.rms_norm_eps))
        put("rope_theta", _positive_float(src, "rope_theta", self.rope_theta))
        rope = _normalize_rope(src, self.rope_scaling, self.rope_theta)
        if rope is not None and rope["rope_type"] in _ORIGINAL_LENGTH_TYPES \
                and "original_max_position_embeddings" not in rope:
            rope = MappingProxyType({**rope, "original_max_position_embeddings":
                                     self.max_position_embeddings})
        put("rope_scaling", rope)
        self._check_longrope_factors()
        self._check_rope_range()
        self._check_plans()

        if self.hidden_act != "silu":
            raise _fail(src, f"hidden_act ({self.hidden_act!r}) is not supported; only "
                             "'silu' is accepted (the SwiGLU MLP of LLaMA)")
        put("tie_word_embeddings",
            _bool(src, "tie_word_embeddings", self.tie_word_embeddings))
        put("attention_bias", _bool(src, "attention_bias", self.attention_bias))
        put("mlp_bias", _bool(src, "mlp_bias", self.mlp_bias))

        if self.dtype is not None:
            put("dtype", _dtype(src, "dtype", self.dtype))

        if self.bos_token_id is not None:
            put("bos_token_id", _token_id(src, "bos_token_id", self.bos_token_id))
        eos = self.eos_token_id
        if isinstance(eos, (list, tuple)):
            ids = tuple(_token_id(src, "eos_token_id", e) for e in eos)
            put("eos_token_id", ids or None)
        elif eos is not None:
            put("eos_token_id", _token_id(src, "eos_token_id", eos))
        self._check_family()

    def _check_family(self) -> None:
        """A family's own fields (subclasses); LLaMA has none."""

    def _check_plans(self) -> None:
        src = self.source
        tp = self.base_model_tp_plan
        if not isinstance(tp, Mapping) or not all(isinstance(k, str) for k in tp):
            raise _fail(src, f"base_model_tp_plan ({tp!r}) must be an object of module "
                             "pattern -> 'colwise' | 'rowwise'")
        for k, v in tp.items():
            if v not in TP_STYLES:
                raise _fail(src, f"base_model_tp_plan[{k!r}] ({v!r}) is not supported; "
                                 f"expected one of {TP_STYLES}")
        object.__setattr__(self, "base_model_tp_plan", MappingProxyType(dict(tp)))
        pp = self.base_model_pp_plan
        if not isinstance(pp, Mapping) or set(pp) != {"embed_tokens", "layers", "norm"}:
            raise _fail(src, f"base_model_pp_plan ({pp!r}) must name the stages embed_tokens, "
                             "layers and norm (transformers' LlamaConfig plan)")
        try:
            norm = {k: (tuple(v[0]), tuple(v[1])) for k, v in pp.items()}
        except (TypeError, IndexError):
            raise _fail(src, f"base_model_pp_plan ({dict(pp)!r}): each stage must be "
                             "[[inputs], [outputs]]") from None
        object.__setattr__(self, "base_model_pp_plan", MappingProxyType(norm))

    def _check_longrope_factors(self) -> None:
        rope = self.rope_scaling
        if rope is None or rope["rope_type"] != "longrope":
            return
        want = self.head_dim // 2
        for key in ("short_factor", "long_factor"):
            if len(rope[key]) != want:
                # transformers only warns, then broadcasting fails (or silently repeats a
                # factor of length 1) inside the forward.
                raise _fail(self.source, f"rope_scaling.{key} has {len(rope[key])} entries; "
                                         f"it needs head_dim / 2 = {want} (one per frequency)")

    def _check_rope_range(self) -> None:
        """Refuse a config whose RoPE angles overflow float32 (NaN sin/cos, NaN logits).

        The largest inverse frequency is theta^-(d-2)/d (1 for theta >= 1), divided by
        the smallest scaling divisor when that is below 1 (a linear/llama3/yarn factor, a
        longrope per-frequency factor); the largest angle is that times the last position.
        Done in logarithms: no overflow, and no array of head_dim / 2 entries built for a
        config that may be absurd.
        """
        d = self.head_dim
        log_freq = max(0.0, -math.log(self.rope_theta) * (d - 2) / d)
        rope = self.rope_scaling or {}
        if rope.get("rope_type") == "longrope":
            divisor = min(rope["short_factor"] + rope["long_factor"])
            name = "rope_scaling.short_factor/long_factor"
        elif rope.get("rope_type") in ("linear", "llama3", "yarn"):
            divisor, name = rope["factor"], "rope_scaling.factor"
        else:  # default, dynamic (its base only grows past the original length)
            divisor, name = 1.0, ""
        log_freq += max(0.0, -math.log(divisor))
        if self.max_position_embeddings > 1 and (
                math.log(self.max_position_embeddings - 1) + log_freq > _F32_MAX_LOG):
            scaled = f", {name} ({divisor!r})" if name else ""
            raise _fail(self.source,
                        f"rope_theta ({self.rope_theta!r}){scaled} and max_position_embeddings "
                        f"({self.max_position_embeddings}) give RoPE angles beyond float32's "
                        "range (the sin/cos tables would be NaN)")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> LlamaConfig:
        """Build from the parsed contents of a config.json; unknown keys are ignored."""
        if not isinstance(d, Mapping):
            raise _fail(source, f"config must be a JSON object, got {type(d).__name__}")
        missing = [k for k in _REQUIRED_KEYS if k not in d]
        if missing:
            raise _fail(source, f"required field(s) missing: {', '.join(missing)}")

        rope_theta, rope_dict = cls._read_rope(d, source)
        if rope_dict is not None and d.get("original_max_position_embeddings") is not None \
                and rope_dict.get("rope_type", rope_dict.get("type")) in _ORIGINAL_LENGTH_TYPES:
            # transformers gives a top-level original_max_position_embeddings priority
            # over the rope dict's (Phi-3 style files).
            rope_dict["original_max_position_embeddings"] = d["original_max_position_embeddings"]
        dtype = d.get("dtype")
        if dtype is None and d.get("torch_dtype") is not None:
            # Checked here so that the message names the key the file used.
            dtype = _dtype(source, "torch_dtype", d["torch_dtype"])

        def opt(key: str, default: Any) -> Any:
            return d[key] if key in d else default

        kwargs: dict[str, Any] = dict(
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            vocab_size=d["vocab_size"],
            # null means "derive it", as in HF.
            num_key_value_heads=d.get("num_key_value_heads"),
            head_dim=d.get("head_dim"),
            rms_norm_eps=opt("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_dict,
            max_position_embeddings=opt("max_position_embeddings", cls._default_max_positions()),
            tie_word_embeddings=opt("tie_word_embeddings", False),
            hidden_act=opt("hidden_act", "silu"),
            attention_bias=opt("attention_bias", False),
            mlp_bias=opt("mlp_bias", False),
            dtype=dtype,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            model_type=opt("model_type", cls.MODEL_TYPE),
            base_model_tp_plan=opt("base_model_tp_plan", None) or DEFAULT_TP_PLAN,
            base_model_pp_plan=opt("base_model_pp_plan", None) or DEFAULT_PP_PLAN,
            source=source,
        )
        kwargs.update(cls._family_fields(d))
        return cls(**kwargs)

    @classmethod
    def _default_max_positions(cls) -> int:
        return 2048

    @classmethod
    def _family_fields(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments a family reads from config.json beyond (or instead of)
        LLaMA's."""
        return {}

    @staticmethod
    def _read_rope(d: Mapping[str, Any], source: str) -> tuple[Any, dict[str, Any] | None]:
        """Merge both rope spellings into (rope_theta, scaling dict without rope_theta)."""
        top = d.get("rope_theta")
        spellings: dict[str, Mapping[str, Any]] = {}
        for name in ("rope_scaling", "rope_parameters"):
            value = d.get(name)
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise _fail(source, f"{name} ({value!r}) must be a dict or null")
            if any(isinstance(v, Mapping) for v in value.values()):
                # Per-layer-type nesting (Gemma-style) has no meaning for LLaMA.
                raise _fail(source, f"{name} ({dict(value)!r}) is nested per layer type; "
                                    "LLaMA has a single rope configuration")
            inner = value.get("rope_theta")
            if inner is not None and top is not None and inner != top:
                raise _fail(source, f"rope_theta ({top!r}) conflicts with {name}.rope_theta "
                                    f"({inner!r})")
            if value:
                spellings[name] = value

        def theta_of(rope: Mapping[str, Any] | None) -> Any:
            if rope and rope.get("rope_theta") is not None:
                return rope["rope_theta"]
            return top if top is not None else _DEFAULT_ROPE_THETA

        # Validate under the spelling the file used, so messages name the key as written.
        canonical = {
            name: _normalize_rope(
                source, rope, _positive_float(source, "rope_theta", theta_of(rope)), name
            )
            for name, rope in spellings.items()
        }
        if len(spellings) == 2 and (
            not _same_rope(canonical["rope_scaling"], canonical["rope_parameters"])
            or theta_of(spellings["rope_scaling"]) != theta_of(spellings["rope_parameters"])
        ):
            raise _fail(source, f"rope_scaling ({dict(spellings['rope_scaling'])!r}) conflicts "
                                f"with rope_parameters ({dict(spellings['rope_parameters'])!r})")
        # transformers: a non-empty rope_scaling replaces rope_parameters.
        chosen = spellings.get("rope_scaling") or spellings.get("rope_parameters")
        if chosen is None:
            return theta_of(None), None
        return theta_of(chosen), {k: v for k, v in chosen.items() if k != "rope_theta"}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> LlamaConfig:
        """Read ``config.json`` from a checkpoint directory, or the file itself."""
        p = Path(path)
        file = p / "config.json" if p.is_dir() else p
        if not present(file):
            raise ConfigError(f"{file}: config file not found")
        text = read_text(file, ConfigError)  # a pipe, device, looping link...: one line
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{file}: invalid JSON: {exc}") from exc
        return cls.from_dict(data, source=str(file))

    # ------------------------------------------------------- what the blocks read

    @property
    def qkv_bias(self) -> bool:
        """q_proj, k_proj and v_proj carry a bias."""
        return self.attention_bias

    @property
    def o_bias(self) -> bool:
        """o_proj carries a bias."""
        return self.attention_bias

    @property
    def qk_norm(self) -> bool:
        """A per-head RMSNorm of q and k before RoPE (q_norm / k_norm weights)."""
        return False

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of a layer (a query sees its last `window` positions, itself
        included), or None for full causal attention."""
        return None

    def stage_fields(self, layers: range) -> dict[str, Any]:
        """Fields of a config holding only `layers` of this one's (a pipeline stage) beyond
        num_hidden_layers: a family's per-layer fields, sliced."""
        return {}

    @property
    def windows(self) -> tuple[int | None, ...]:
        return tuple(self.layer_window(i) for i in range(self.num_hidden_layers))

    @property
    def position_limit(self) -> int | None:
        """The positions the model accepts: max_position_embeddings, or None for dynamic
        RoPE, which exists to run past it (the cache length is then the limit)."""
        return None if self.rope_type == "dynamic" else self.max_position_embeddings

    # ---------------------------------------------------------------------- derived

    @property
    def rope_type(self) -> str:
        return self.rope_scaling["rope_type"] if self.rope_scaling else "default"

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        eos = self.eos_token_id
        if eos is None:
            return ()
        return eos if isinstance(eos, tuple) else (eos,)

    @property
    def rope_attention_scaling(self) -> float:
        """Factor on cos/sin: 1.0 except for yarn and longrope (rope.py)."""
        from .rope import attention_factor

        return attention_factor(self)

    def rope_inv_freq(self, seq_len: int | None = None) -> np.ndarray:
        """Inverse RoPE frequencies [head_dim // 2] as transformers computes them at load
        (float32 values, held in float64); `seq_len`: dynamic's and longrope's for a
        forward whose positions reach seq_len (rope.py)."""
        from .rope import inv_freq

        return inv_freq(self, seq_len).astype(np.float64)

    def expected_weight_shapes(self) -> WeightShapes:
        """HF parameter name -> shape (a read-only Mapping, in HF's parameter order);
        lm_head.weight is listed even when tied."""
        return WeightShapes(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (old rope spelling), readable back by :meth:`from_dict`."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                value = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


_LAYER_PREFIX = "model.layers."
_HF_ORDER = ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
             "self_attn.o_proj", "self_attn.q_norm", "self_attn.k_norm",
             "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _hf_order(name: str) -> tuple[int, int]:
    module, _, kind = name.rpartition(".")
    return _HF_ORDER.index(module), 0 if kind == "weight" else 1


class WeightShapes(Mapping[str, tuple[int, ...]]):
    """HF parameter name -> shape of one config, computed per lookup instead of stored.

    A config.json may claim any number of layers: 10^6 of them took 6 s and 1.7 GB as a
    dict before the checkpoint could even be compared with it. Lookups parse the name,
    ``len`` is arithmetic, and iteration yields names lazily in HF's parameter order, so
    the loader can compare a checkpoint against the claim at the checkpoint's own cost.
    Equal to a dict with the same items (Mapping equality).
    """

    def __init__(self, config: LlamaConfig) -> None:
        h, inter, d = config.hidden_size, config.intermediate_size, config.head_dim
        q_out = config.num_attention_heads * d
        kv_out = config.num_key_value_heads * d
        self.num_hidden_layers = config.num_hidden_layers
        self._layer: dict[str, tuple[int, ...]] = {
            "input_layernorm.weight": (h,),
            "self_attn.q_proj.weight": (q_out, h),
            "self_attn.k_proj.weight": (kv_out, h),
            "self_attn.v_proj.weight": (kv_out, h),
            "self_attn.o_proj.weight": (h, q_out),
            "post_attention_layernorm.weight": (h,),
            "mlp.gate_proj.weight": (inter, h),
            "mlp.up_proj.weight": (inter, h),
            "mlp.down_proj.weight": (h, inter),
        }
        # In HF's parameter order: a module's bias after its weight, q_norm/k_norm after
        # the projections.
        extra: dict[str, tuple[int, ...]] = {}
        if config.qkv_bias:
            extra |= {"self_attn.q_proj.bias": (q_out,), "self_attn.k_proj.bias": (kv_out,),
                      "self_attn.v_proj.bias": (kv_out,)}
        if config.o_bias:
            extra["self_attn.o_proj.bias"] = (h,)
        if config.qk_norm:
            extra |= {"self_attn.q_norm.weight": (d,), "self_attn.k_norm.weight": (d,)}
        if config.mlp_bias:
            extra |= {"mlp.gate_proj.bias": (inter,), "mlp.up_proj.bias": (inter,),
                      "mlp.down_proj.bias": (h,)}
        if extra:
            self._layer = dict(sorted({**self._layer, **extra}.items(),
                                      key=lambda kv: _hf_order(kv[0])))
        self._head = {"model.embed_tokens.weight": (config.vocab_size, h)}
        self._tail = {"model.norm.weight": (h,), "lm_head.weight": (config.vocab_size, h)}

    def __getitem__(self, name: str) -> tuple[int, ...]:
        if not isinstance(name, str):
            raise KeyError(name)
        if name in self._head:
            return self._head[name]
        if name in self._tail:
            return self._tail[name]
        if name.startswith(_LAYER_PREFIX):
            index, _, rest = name[len(_LAYER_PREFIX):].partition(".")
            # Canonical decimal only: "01" or "+1" are not names HF ever writes.
            if (index.isascii() and index.isdigit() and str(int(index)) == index
                    and int(index) < self.num_hidden_layers and rest in self._layer):
                return self._layer[rest]
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        yield from self._head
        for i in range(self.num_hidden_layers):
            for rest in self._layer:
                yield f"{_LAYER_PREFIX}{i}.{rest}"
        yield from self._tail

    def __len__(self) -> int:
        return len(self._head) + self.num_hidden_layers * len(self._layer) + len(self._tail)

    def __repr__(self) -> str:
        return (f"WeightShapes({len(self)} tensors, {self.num_hidden_layers} layers, "
                f"layer {self._layer}, {self._head | self._tail})")
