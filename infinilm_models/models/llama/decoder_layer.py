"""LlamaDecoderLayer: pre-norm attention and MLP blocks, each with a residual add.

    hidden += self_attn(input_layernorm(hidden))
    hidden += mlp(post_attention_layernorm(hidden))

On the fast path the residual adds are folded into the o_proj and down_proj gemms
(beta = 1 over the residual stream). Where the build has add_rms_norm (fusion.py), the
attention residual and the post-attention norm are that one op instead: o_proj writes
the attention output, and add_rms_norm adds it to the residual stream and normalizes the
sum for the MLP. While intermediates are captured or replaced (the
conformance suite's capture points), each block writes its own output first, so the
attention and MLP outputs exist as tensors of their own, and the add is a separate op.
Under tensor parallelism `all_reduce` sums the row-parallel partial outputs of the ranks
(only rank 0 adds the residual, so it is counted once).
"""

from __future__ import annotations

from collections.abc import Callable

from ...runtime import Tensor, ops
from .attention import LlamaAttention
from .buffers import Buffers
from .configuration import LlamaConfig
from .fusion import Fused
from .kv_cache import KVCache
from .mlp import LlamaMLP
from .rope import LlamaRotaryEmbedding

# Records a named intermediate (and, in an isolated run, replaces its value).
Capture = Callable[[str, Tensor], object]


class LlamaDecoderLayer:
    def __init__(self, config: LlamaConfig, layer_idx: int, weights: dict[str, Tensor],
                 name_index: int | None = None, fused: Fused | None = None) -> None:
        """`layer_idx` indexes this model's cache; `name_index` (default: the same) is the
        layer's index in the whole model, used in capture names (a pipeline stage holds
        layers from the middle of the model)."""
        self.layer_idx = layer_idx
        self.name_index = layer_idx if name_index is None else name_index
        self.eps = config.rms_norm_eps
        self.input_layernorm = weights["input_layernorm.weight"]
        self.post_attention_layernorm = weights["post_attention_layernorm.weight"]
        self.self_attn = LlamaAttention(
            config, layer_idx,
            {k.removeprefix("self_attn."): v for k, v in weights.items()
             if k.startswith("self_attn.")})
        self.mlp = LlamaMLP({k.removeprefix("mlp."): v for k, v in weights.items()
                             if k.startswith("mlp.")}, fused)
        self.fused_norm = bool(fused and fused.add_rms_norm)
        # Tensor parallelism: set by the parallel model (None: one rank).
        self.all_reduce: Callable[[Tensor], None] | None = None
        self.adds_residual = True  # False on TP ranks other than 0

    def forward(self, bufs: Buffers, cache: KVCache, start: int, rope: LlamaRotaryEmbedding,
                rope_algo: ops.RoPEAlgo, capture: Capture | None = None) -> None:
        """Updates the residual stream bufs.hidden in place."""
        name = f"layers.{self.name_index}"
        ops.rms_norm(bufs.normed, bufs.hidden, self.input_layernorm, self.eps)
        if capture is None:
            self._attention_and_norm(
                lambda out, residual: self.self_attn.forward(
                    bufs.normed, bufs, cache, start, rope, rope_algo, out, residual), bufs)
        else:
            attn_out = self.self_attn.forward(bufs.normed, bufs, cache, start, rope, rope_algo,
                                              bufs.attn_out, False)
            self._reduce(attn_out)
            capture(f"{name}.self_attn", attn_out)
            if self.fused_norm:
                # In an isolated run both inputs are the golden's already (injected at the
                # previous points), so the norm it gives the MLP is add_rms_norm's own.
                ops.add_rms_norm(bufs.normed, bufs.hidden, bufs.hidden, attn_out,
                                 self.post_attention_layernorm, self.eps)
                capture(f"{name}.residual_attn", bufs.hidden)
            else:
                self._residual(bufs.hidden, attn_out)
                capture(f"{name}.residual_attn", bufs.hidden)
                ops.rms_norm(bufs.normed, bufs.hidden, self.post_attention_layernorm,
                             self.eps)
        if capture is None:
            self.mlp.forward(bufs.normed, bufs, bufs.hidden, self.adds_residual)
            self._reduce(bufs.hidden)
        else:
            mlp_out = self.mlp.forward(bufs.normed, bufs, bufs.mlp_out, False)
            self._reduce(mlp_out)
            capture(f"{name}.mlp", mlp_out)
            self._residual(bufs.hidden, mlp_out)
            capture(name, bufs.hidden)

    def forward_fixed(self, bufs: Buffers, cache: KVCache, rope: LlamaRotaryEmbedding,
                      rope_algo: ops.RoPEAlgo, step) -> None:
        """The fixed-shape decode step (attention.forward_fixed); residuals folded."""
        ops.rms_norm(bufs.normed, bufs.hidden, self.input_layernorm, self.eps)
        self._attention_and_norm(
            lambda out, residual: self.self_attn.forward_fixed(
                bufs.normed, bufs, cache, rope, rope_algo, out, residual, step), bufs)
        self.mlp.forward(bufs.normed, bufs, bufs.hidden, self.adds_residual)
        self._reduce(bufs.hidden)

    def _attention_and_norm(self, attend: Callable[[Tensor, bool], Tensor],
                            bufs: Buffers) -> None:
        """The attention block, its residual and the post-attention norm (bufs.normed):
        o_proj adds the residual (beta = 1) and rms_norm follows, or, with add_rms_norm,
        o_proj writes the block's output and the fused op adds and normalizes."""
        if self.fused_norm:
            out = attend(bufs.attn_out, False)
            self._reduce(out)
            ops.add_rms_norm(bufs.normed, bufs.hidden, bufs.hidden, out,
                             self.post_attention_layernorm, self.eps)
            return
        attend(bufs.hidden, self.adds_residual)
        self._reduce(bufs.hidden)
        ops.rms_norm(bufs.normed, bufs.hidden, self.post_attention_layernorm, self.eps)

    def _reduce(self, t: Tensor) -> None:
        if self.all_reduce is not None:
            self.all_reduce(t)

    @staticmethod
    def _residual(hidden: Tensor, block_out: Tensor) -> None:
        ops.add(hidden, hidden, block_out)
