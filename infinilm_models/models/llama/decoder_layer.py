"""LlamaDecoderLayer: pre-norm attention and MLP blocks, each with a residual add.

    hidden += self_attn(input_layernorm(hidden))
    hidden += mlp(post_attention_layernorm(hidden))

Construction turns the fusion plan into the layer's steps, and `forward` runs them, the
same for a forward over the cache and for the fixed-shape decode step (the attention's
`step` argument appends and attends; attention.py):

    residual_attn   the attention residual and the post-attention norm: with add_rms_norm
                    (fusion.py) one op over the block's output; else the residual folded
                    into o_proj (beta = 1 over the residual stream), then rms_norm
    residual_mlp    the MLP residual, folded into down_proj
    mlp.activation  silu_and_mul or swiglu (mlp.py)

While intermediates are recorded or replaced (`record`: the conformance suite's capture
points, capture.py), each block writes its own output first, so the attention and MLP
outputs exist as tensors of their own, and the add is a separate op; without a recorder
nothing of it runs. Under tensor parallelism `all_reduce` sums the row-parallel partial
outputs of the ranks (only rank 0 adds the residual and the row-parallel biases, so each
is counted once).
"""

from __future__ import annotations

from collections.abc import Callable

from ...runtime import Tensor, ops
from .attention import LlamaAttention
from .buffers import Buffers
from .configuration import LlamaConfig
from .fusion import Fused
from .mlp import LlamaMLP

# Records a named intermediate (and, in an isolated run, replaces its value).
Capture = Callable[[str, Tensor], object]


class AddThenNorm:
    """hidden += block output (folded into the block's last gemm where nothing is
    recorded), then rms_norm of the sum into bufs.normed (none after the MLP)."""

    folds = True

    def __init__(self, weight: Tensor | None, eps: float) -> None:
        self.weight, self.eps = weight, eps

    def __call__(self, bufs: Buffers, out: Tensor, record: Capture | None, name: str) -> None:
        ops.add(bufs.hidden, bufs.hidden, out)
        if record:
            record(name, bufs.hidden)
        self.norm(bufs)

    def norm(self, bufs: Buffers) -> None:
        if self.weight is not None:
            ops.rms_norm(bufs.normed, bufs.hidden, self.weight, self.eps)


class FusedAddNorm:
    """add_rms_norm: hidden += block output and its norm into bufs.normed, one op. In an
    isolated run both inputs are the golden's already (injected at the previous points),
    so the norm it gives the MLP is add_rms_norm's own."""

    folds = False

    def __init__(self, weight: Tensor, eps: float) -> None:
        self.weight, self.eps = weight, eps

    def __call__(self, bufs: Buffers, out: Tensor, record: Capture | None, name: str) -> None:
        ops.add_rms_norm(bufs.normed, bufs.hidden, bufs.hidden, out, self.weight, self.eps)
        if record:
            record(name, bufs.hidden)


class LlamaDecoderLayer:
    def __init__(self, config: LlamaConfig, layer_idx: int, weights: dict[str, Tensor],
                 name_index: int | None = None, fused: Fused | None = None) -> None:
        """`layer_idx` indexes this model's cache; `name_index` (default: the same) is the
        layer's index in the whole model, used in capture names (a pipeline stage holds
        layers from the middle of the model; its config describes its own layers)."""
        fused = fused or Fused()
        self.layer_idx = layer_idx
        self.name_index = layer_idx if name_index is None else name_index
        self.eps = config.rms_norm_eps
        self.input_layernorm = weights["input_layernorm.weight"]
        self.post_attention_layernorm = weights["post_attention_layernorm.weight"]
        self.self_attn = LlamaAttention(
            config, layer_idx, {k.removeprefix("self_attn."): v for k, v in weights.items()
                                if k.startswith("self_attn.")},
            window=config.layer_window(layer_idx))
        self.mlp = LlamaMLP({k.removeprefix("mlp."): v for k, v in weights.items()
                             if k.startswith("mlp.")}, fused)
        self.residual_attn = (FusedAddNorm if fused.add_rms_norm else AddThenNorm)(
            self.post_attention_layernorm, self.eps)
        self.residual_mlp = AddThenNorm(None, self.eps)
        # Tensor parallelism: set by the parallel model (None: one rank).
        self.all_reduce: Callable[[Tensor], None] | None = None
        self.adds_residual = True  # False on TP ranks other than 0

    def forward(self, bufs: Buffers, step, record: Capture | None = None) -> None:
        """Updates the residual stream bufs.hidden in place; `step` appends and attends
        (attention.CachedStep or FixedStep)."""
        name = f"layers.{self.name_index}"
        ops.rms_norm(bufs.normed, bufs.hidden, self.input_layernorm, self.eps)
        self._block(self.self_attn, bufs.attn_out, self.residual_attn, bufs, step, record,
                    f"{name}.self_attn", f"{name}.residual_attn")
        self._block(self.mlp, bufs.mlp_out, self.residual_mlp, bufs, step, record,
                    f"{name}.mlp", name)

    def _block(self, block, own: Tensor, residual, bufs: Buffers, step,
               record: Capture | None, out_name: str, sum_name: str) -> None:
        """One block on bufs.normed and its residual: folded into the block's last gemm
        (out = hidden, beta = 1) unless recording or a fused residual op needs the
        block's output in a tensor of its own (`own`)."""
        if record is None and residual.folds:
            block.forward(bufs.normed, bufs, step, bufs.hidden, self.adds_residual,
                          self.adds_residual)
            self._reduce(bufs.hidden)
            residual.norm(bufs)
            return
        out = block.forward(bufs.normed, bufs, step, own, False, self.adds_residual)
        self._reduce(out)
        if record:
            record(out_name, out)
        residual(bufs, out, record, sum_name)

    def _reduce(self, t: Tensor) -> None:
        if self.all_reduce is not None:
            self.all_reduce(t)
