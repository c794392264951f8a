"""The declared capture points of LlamaForCausalLM: every named intermediate a forward
can record (and replace), in execution order, with the sub-module that produces it, the
ops that sub-module runs and the transformers module whose output is the same tensor.

One list serves the recorder (`forward(capture=...)`), the reference side's hooks, the
comparison and the report, so a name means the same tensor everywhere:

    embed_tokens                 embedding         host gather + one copy
    layers.{i}.self_attn         attention         rms_norm, gemm, rope, rearrange, causal_softmax
    layers.{i}.residual_attn     attention residual  add
    layers.{i}.mlp               mlp               rms_norm, gemm, swiglu
    layers.{i}                   mlp residual      add
    norm                         final norm        rms_norm

and, read from the KV cache after a forward, layers.{i}.key_cache / value_cache (the kv
cache sub-module: gemm for k/v, rope for k, rearrange for the append).

`forward(inject={name: array})` replaces the value of a capture point right after it is
recorded, so the rest of the forward consumes the given value: injecting a reference
run's values at every point makes every sub-module compute on the reference's own input
("isolated"), which separates a sub-module that computes wrong from error that arrives
from earlier layers.
"""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION_OPS = ("rms_norm", "gemm", "rope", "rearrange", "causal_softmax")
MLP_OPS = ("rms_norm", "gemm", "swiglu")
CACHE_OPS = ("gemm", "rope", "rearrange")


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


def capture_points(num_layers: int, *, caches: bool = True) -> list[CapturePoint]:
    pts = [CapturePoint("embed_tokens", None, "embedding", ("embedding",),
                        "model.embed_tokens", None)]
    prev = "embed_tokens"
    for i in range(num_layers):
        pts.append(CapturePoint(f"layers.{i}.self_attn", i, "attention", ATTENTION_OPS,
                                f"model.layers.{i}.self_attn", prev))
        if caches:
            for kind in ("key", "value"):
                pts.append(CapturePoint(f"layers.{i}.{kind}_cache", i, "kv cache", CACHE_OPS,
                                        None, prev, cache=True))
        pts.append(CapturePoint(f"layers.{i}.residual_attn", i, "attention residual", ("add",),
                                None, f"layers.{i}.self_attn"))
        pts.append(CapturePoint(f"layers.{i}.mlp", i, "mlp", MLP_OPS, f"model.layers.{i}.mlp",
                                f"layers.{i}.residual_attn"))
        pts.append(CapturePoint(f"layers.{i}", i, "mlp residual", ("add",),
                                f"model.layers.{i}", f"layers.{i}.mlp"))
        prev = f"layers.{i}"
    pts.append(CapturePoint("norm", None, "final norm", ("rms_norm",), "model.norm", prev))
    return pts
