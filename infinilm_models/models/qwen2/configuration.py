"""Qwen2's config.json, read as transformers' Qwen2Config reads it.

Qwen2 is LLaMA's blocks (models/llama) with these differences:

* q_proj, k_proj and v_proj always carry a bias, o_proj and the MLP never (the file has
  no attention_bias/mlp_bias; transformers ignores them if present);
* sliding-window attention on the layers `layer_types` names "sliding_attention"; without
  `layer_types`, with use_sliding_window, the layers from max_window_layers on; the window
  is `sliding_window` (null unless use_sliding_window, as transformers sets it);
* defaults: max_position_embeddings 32768, no bos/eos.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..llama.configuration import LlamaConfig, _bool, _fail, _is_int, _positive_int

LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass(frozen=True, kw_only=True)
class Qwen2Config(LlamaConfig):
    MODEL_TYPE: ClassVar[str] = "qwen2"

    model_type: str = "qwen2"
    use_sliding_window: bool = False
    sliding_window: int | None = None  # the effective window: null unless use_sliding_window
    max_window_layers: int = 28
    layer_types: tuple[str, ...] | None = None

    @classmethod
    def _default_max_positions(cls) -> int:
        return 32768

    @classmethod
    def _family_fields(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        return {"attention_bias": False, "mlp_bias": False,
                "use_sliding_window": d.get("use_sliding_window", False),
                "sliding_window": d.get("sliding_window", 4096),
                "max_window_layers": d.get("max_window_layers", 28),
                "layer_types": d.get("layer_types")}

    def _check_family(self) -> None:
        src = self.source

        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        use = _bool(src, "use_sliding_window", self.use_sliding_window)
        window = self.sliding_window
        if window is not None:
            window = _positive_int(src, "sliding_window", window)
        window = window if use else None
        layers = self.max_window_layers
        if not _is_int(layers) or layers < 0:
            raise _fail(src, f"max_window_layers ({layers!r}) must be a non-negative integer")
        types = self.layer_types
        n = self.num_hidden_layers
        if types is None:
            types = tuple("sliding_attention" if window is not None and i >= layers
                          else "full_attention" for i in range(n))
        if not isinstance(types, (list, tuple)) or len(types) != n or \
                any(t not in LAYER_TYPES for t in types):
            raise _fail(src, f"layer_types ({types!r}) must list one of {LAYER_TYPES} per "
                             f"layer ({n})")
        if window is None and "sliding_attention" in types:
            raise _fail(src, f"layer_types names layer {list(types).index('sliding_attention')} "
                             f"'sliding_attention' but there is no window (sliding_window "
                             f"{self.sliding_window!r}, use_sliding_window {use!r})")
        put("use_sliding_window", use)
        put("sliding_window", window)
        put("layer_types", tuple(types))

    @property
    def qkv_bias(self) -> bool:
        return True

    @property
    def o_bias(self) -> bool:
        return False

    def layer_window(self, layer: int) -> int | None:
        return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None

    def stage_fields(self, layers: range) -> dict[str, Any]:
        return {"layer_types": tuple(self.layer_types[i] for i in layers)}
