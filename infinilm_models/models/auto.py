"""`model_type` -> model class, behind AutoLlamaModel. A new family is a new folder under
models/ plus one line here."""

from __future__ import annotations

import json
from pathlib import Path

from ..runtime import Device, DType
from .llama.configuration import ConfigError
from .llama.modeling_llama import LlamaForCausalLM

MODEL_REGISTRY: dict[str, type] = {
    "llama": LlamaForCausalLM,
}


class AutoLlamaModel:
    """Picks the implementation from config.json's model_type and loads the checkpoint."""

    @staticmethod
    def from_pretrained(model_path: str | Path, device: str | Device = "cpu",
                        dtype: str | DType | None = None, **kwargs) -> LlamaForCausalLM:
        config_file = Path(model_path) / "config.json"
        try:
            model_type = json.loads(config_file.read_text()).get("model_type", "llama")
        except FileNotFoundError:
            raise ConfigError(f"{config_file}: not found (is {model_path} a model "
                              "directory?)") from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"{config_file}: cannot read: {e}") from None
        cls = MODEL_REGISTRY.get(model_type)
        if cls is None:
            raise ConfigError(f"{config_file}: model_type {model_type!r} is not supported; "
                              f"known: {sorted(MODEL_REGISTRY)}")
        return cls.from_pretrained(model_path, device, dtype, **kwargs)
