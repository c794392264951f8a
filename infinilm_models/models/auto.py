"""AutoModel (and AutoLlamaModel, its older name): the class for a checkpoint from
registry.py, loaded alone or as a tensor/pipeline-parallel model."""

from __future__ import annotations

import os
from typing import Any

from ..runtime import DType
from .llama.configuration import LlamaConfig
from .registry import MODEL_REGISTRY, model_class

__all__ = ["MODEL_REGISTRY", "AutoLlamaModel", "AutoModel", "load_config", "model_class"]


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
