"""Mistral's config.json, read as transformers' MistralConfig reads it.

Mistral is LLaMA's blocks with sliding-window attention on every layer: a query attends
to its last `sliding_window` positions, itself included (absent: 4096, transformers'
default; null: full attention, as Mistral v0.2 on). No biases (no attention_bias or
mlp_bias field; transformers ignores them if present), and transformers' defaults:
max_position_embeddings 131072, bos 1, eos 2. A `layer_types` list is ignored, as
transformers' Mistral ignores it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..llama.configuration import LlamaConfig, _positive_int


@dataclass(frozen=True, kw_only=True)
class MistralConfig(LlamaConfig):
    MODEL_TYPE: ClassVar[str] = "mistral"

    model_type: str = "mistral"
    sliding_window: int | None = 4096

    @classmethod
    def _default_max_positions(cls) -> int:
        return 4096 * 32

    @classmethod
    def _family_fields(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        return {"attention_bias": False, "mlp_bias": False,
                "sliding_window": d.get("sliding_window", 4096),
                "bos_token_id": d.get("bos_token_id", 1),
                "eos_token_id": d.get("eos_token_id", 2)}

    def _check_family(self) -> None:
        if self.sliding_window is not None:
            object.__setattr__(self, "sliding_window",
                               _positive_int(self.source, "sliding_window", self.sliding_window))

    def layer_window(self, layer: int) -> int | None:
        return self.sliding_window
