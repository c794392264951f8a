"""The declared capture points of LlamaForCausalLM: every named intermediate a forward
can record (and replace), in execution order, with the sub-module that produces it, the
ops that sub-module runs and the transformers module whose output is the same tensor.

One list serves the recorder (`forward(capture=...)`), the reference side's hooks, the
comparison and the report, so a name means the same tensor everywhere:

    embed_tokens                 embedding         host gather + one copy (no op)
    layers.{i}.key_cache/value_cache  kv cache     rms_norm, gemm, rope, rearrange (read after)
    layers.{i}.self_attn         attention         rms_norm, gemm, rope, rearrange, causal_softmax
    layers.{i}.residual_attn     attention residual  add
    layers.{i}.mlp               mlp               rms_norm, gemm, swiglu
    layers.{i}                   mlp residual      add
    norm                         final norm        rms_norm

The KV cache points are read from the cache after a forward (the input norm, gemm for
k/v, rope for k, rearrange for the append); they come before the attention in this order
because the cache is written before the layer attends over it.

The ops are those of the plan that ran (`capture_points(..., fused=model.fused)`), so a
localization names the op that computed the tensor: with the fused plan (fusion.py)
embed_tokens is `embedding`, the attention residual and the MLP's norm `add_rms_norm`,
and the MLP's activation `silu_and_mul`.

`forward(inject={name: array})` replaces the value of a capture point right after it is
recorded, so the rest of the forward consumes the given value: injecting a reference
run's values at every point makes every sub-module compute on the reference's own input
("isolated"), which separates a sub-module that computes wrong from error that arrives
from earlier layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .fusion import Fused

ATTENTION_OPS = ("rms_norm", "gemm", "rope", "rearrange", "causal_softmax")
MLP_OPS = ("rms_norm", "gemm", "swiglu")
# The new K/V: the layer's input norm, the k/v projection, RoPE on k, the append.
CACHE_OPS = ("rms_norm", "gemm", "rope", "rearrange")


def _ops(fused: Fused | None) -> dict[str, tuple[str, ...]]:
    """Sub-module -> the ops it runs under `fused` (None: the plain sequence)."""
    names = set(fused.names) if fused is not None else set()
    norm = "add_rms_norm" if "add_rms_norm" in names else "rms_norm"
    act = "silu_and_mul" if "silu_and_mul" in names else "swiglu"
    return {"embedding": ("embedding",) if "embedding" in names else (),
            "attention": ATTENTION_OPS, "kv cache": CACHE_OPS,
            "attention residual": ("add_rms_norm",) if norm == "add_rms_norm" else ("add",),
            "mlp": (norm, "gemm", act), "mlp residual": ("add",),
            "final norm": ("rms_norm",)}


@dataclass(frozen=True)
class CapturePoint:
    name: str
    layer: int | None
    submodule: str
    ops: tuple[str, ...]
    # The transformers module (dotted path from LlamaForCausalLM) whose forward output is
    # this tensor; None where the tensor is not a module output (derived on that side).
    hf_module: str | None
    # The capture point this sub-module computes from: what an isolated run injects
    # before it (None: the token ids).
    input: str | None
    cache: bool = False  # read from the KV cache after the forward, not recorded in it

    @property
    def isolatable(self) -> bool:
        """A sub-module that computes (not a residual add of two captured tensors)."""
        return self.submodule in ("attention", "mlp", "kv cache", "final norm")


def capture_points(num_layers: int, *, caches: bool = True,
                   fused: Fused | None = None) -> list[CapturePoint]:
    """The points in execution order; their ops those of the plan `fused` (the model's
    `.fused`; None: the plain op sequence of InfiniCore 0.1.0)."""
    ops = _ops(fused)
    pts = [CapturePoint("embed_tokens", None, "embedding", ops["embedding"],
                        "model.embed_tokens", None)]
    prev = "embed_tokens"
    for i in range(num_layers):
        # The new K/V are written to the cache before the layer attends over it: a wrong
        # cache write is the first wrong tensor, and is named as the cache.
        if caches:
            for kind in ("key", "value"):
                pts.append(CapturePoint(f"layers.{i}.{kind}_cache", i, "kv cache",
                                        ops["kv cache"], None, prev, cache=True))
        pts.append(CapturePoint(f"layers.{i}.self_attn", i, "attention", ops["attention"],
                                f"model.layers.{i}.self_attn", prev))
        pts.append(CapturePoint(f"layers.{i}.residual_attn", i, "attention residual",
                                ops["attention residual"], None, f"layers.{i}.self_attn"))
        pts.append(CapturePoint(f"layers.{i}.mlp", i, "mlp", ops["mlp"],
                                f"model.layers.{i}.mlp", f"layers.{i}.residual_attn"))
        pts.append(CapturePoint(f"layers.{i}", i, "mlp residual", ops["mlp residual"],
                                f"model.layers.{i}", f"layers.{i}.mlp"))
        prev = f"layers.{i}"
    pts.append(CapturePoint("norm", None, "final norm", ops["final norm"], "model.norm", prev))
    return pts
