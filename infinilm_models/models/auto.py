"""`model_type` -> model class, behind AutoModel (and AutoLlamaModel, its older name). A new
family is a new folder under models/ plus one line here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import files
from ..errors import ConfigError
from ..runtime import DType
from .llama.configuration import LlamaConfig
from .llama.modeling_llama import LlamaForCausalLM
from .mistral.modeling_mistral import MistralForCausalLM
from .qwen2.modeling_qwen2 import Qwen2ForCausalLM
from .qwen3.modeling_qwen3 import Qwen3ForCausalLM

MODEL_REGISTRY: dict[str, type] = {
    "llama": LlamaForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "qwen3": Qwen3ForCausalLM,
    "mistral": MistralForCausalLM,
}


def model_class(model_path: str | os.PathLike[str]) -> type:
    """The implementation for a checkpoint directory, from its config.json's model_type
    (absent: "llama", as in HF LLaMA exports). Raises ConfigError naming the file."""
    if not isinstance(model_path, (str, os.PathLike)):
        raise TypeError(f"model_path must be a path, got {type(model_path).__name__}")
    config_file = Path(model_path) / "config.json"
    if not files.present(config_file):
        raise ConfigError(f"{config_file}: not found (is {model_path} a model directory?)")
    text = files.read_text(config_file, ConfigError)  # a pipe, a device...: one line
    try:
        data: Any = json.loads(text)
    except ValueError as e:  # invalid JSON
        raise ConfigError(f"{config_file}: cannot read: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{config_file}: config must be a JSON object, got "
                          f"{type(data).__name__}")
    model_type = data.get("model_type", "llama")
    cls = MODEL_REGISTRY.get(model_type) if isinstance(model_type, str) else None
    if cls is None:
        raise ConfigError(f"{config_file}: model_type {model_type!r} is not supported; "
                          f"known: {sorted(MODEL_REGISTRY)}")
    return cls


def load_config(model_path: str | os.PathLike[str]) -> LlamaConfig:
    """config.json read by its family's config class."""
    return model_class(model_path).config_class.from_pretrained(model_path)


class AutoModel:
    """Picks the implementation from config.json's model_type and loads the checkpoint."""

    @staticmethod
    def from_pretrained(model_path: str | os.PathLike[str], device: Any = "cpu",
                        dtype: str | DType | None = None, *, tp: int = 1, pp: int = 1,
                        **kwargs: Any) -> Any:
        """`model_class(model_path).from_pretrained(...)`; see LlamaForCausalLM's. With
        `tp` x `pp` > 1, a ParallelLlamaForCausalLM over that many ranks (`device`: a
        device type, whose first tp x pp devices are used, "cpu" for ranks sharing the
        CPU, or a list of devices)."""
        cls = model_class(model_path)
        if tp != 1 or pp != 1:
            from .llama.parallel import ParallelLlamaForCausalLM

            return ParallelLlamaForCausalLM.from_pretrained(model_path, device, dtype, tp=tp,
                                                            pp=pp, **kwargs)
        return cls.from_pretrained(model_path, device, dtype, **kwargs)


class AutoLlamaModel(AutoModel):
    """The registry's first name, kept: the same as AutoModel for every family."""
