"""Qwen3's config.json, read as transformers' Qwen3Config reads it.

Qwen3 is Qwen2's layout (models/qwen2: sliding layers) on LLaMA's blocks, except:

* q and k are normalized per head before RoPE: an RMSNorm over head_dim with weights
  self_attn.q_norm / k_norm (eps rms_norm_eps), after the projections' bias;
* the projections' bias follows attention_bias (q, k, v and o alike, default false);
* head_dim defaults to 128, not hidden_size / num_attention_heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..llama.configuration import LlamaConfig
from ..qwen2.configuration import Qwen2Config


@dataclass(frozen=True, kw_only=True)
class Qwen3Config(Qwen2Config):
    MODEL_TYPE: ClassVar[str] = "qwen3"

    model_type: str = "qwen3"

    @classmethod
    def _family_fields(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        out = super()._family_fields(d)
        out["attention_bias"] = d.get("attention_bias", False)
        out["head_dim"] = d.get("head_dim", 128)  # null: derived, as in LLaMA
        return out

    # The projections' bias follows attention_bias, as LLaMA's (Qwen2's is fixed).
    qkv_bias = LlamaConfig.qkv_bias
    o_bias = LlamaConfig.o_bias

    @property
    def qk_norm(self) -> bool:
        return True
