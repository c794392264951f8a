"""LlamaDecoderLayer: pre-norm attention and MLP blocks, each with a residual add."""

from __future__ import annotations

from collections.abc import Callable

from ...runtime import Tensor, ops
from .attention import LlamaAttention
from .buffers import Buffers
from .configuration import LlamaConfig
from .kv_cache import KVCache
from .mlp import LlamaMLP
from .rope import LlamaRotaryEmbedding

Capture = Callable[[str, Tensor], None]


class LlamaDecoderLayer:
    def __init__(self, config: LlamaConfig, layer_idx: int, weights: dict[str, Tensor]) -> None:
        self.layer_idx = layer_idx
        self.eps = config.rms_norm_eps
        self.input_layernorm = weights["input_layernorm.weight"]
        self.post_attention_layernorm = weights["post_attention_layernorm.weight"]
        self.self_attn = LlamaAttention(
            config, layer_idx,
            {k.removeprefix("self_attn."): v for k, v in weights.items()
             if k.startswith("self_attn.")})
        self.mlp = LlamaMLP({k.removeprefix("mlp."): v for k, v in weights.items()
                             if k.startswith("mlp.")})

    def forward(self, bufs: Buffers, cache: KVCache, start: int, rope: LlamaRotaryEmbedding,
                rope_algo: ops.RoPEAlgo, capture: Capture | None = None) -> None:
        """Updates the residual stream bufs.hidden in place."""
        name = f"layers.{self.layer_idx}"
        ops.rms_norm(bufs.normed, bufs.hidden, self.input_layernorm, self.eps)
        attn_out = self.self_attn.forward(bufs.normed, bufs, cache, start, rope, rope_algo)
        if capture:
            capture(f"{name}.self_attn", attn_out)
        self._residual(bufs.hidden, attn_out)
        if capture:
            capture(f"{name}.residual_attn", bufs.hidden)

        ops.rms_norm(bufs.normed, bufs.hidden, self.post_attention_layernorm, self.eps)
        mlp_out = self.mlp.forward(bufs.normed, bufs)
        if capture:
            capture(f"{name}.mlp", mlp_out)
        self._residual(bufs.hidden, mlp_out)
        if capture:
            capture(name, bufs.hidden)

    @staticmethod
    def _residual(hidden: Tensor, block_out: Tensor) -> None:
        ops.add(hidden, hidden, block_out)
