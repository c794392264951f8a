"""`model_type` -> model class. A new family is a new folder under models/ plus one line
here. Apart from auto.py so that the parallel wrapper (llama/parallel.py), which auto.py
imports, can pick a rank's class without importing auto.py back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import files
from ..errors import ConfigError
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
