"""Model-level comparison machinery: which checkpoints, the two runtimes, captured tensors.

Three runs of the same checkpoint on the same token ids:
  * golden  – transformers LlamaForCausalLM in float32 on CPU (eager attention);
  * ref     – transformers in the tested dtype, on the tested device where torch has it
              (its error against golden is what that dtype costs a mature implementation);
  * ours    – infinilm_models on InfiniCore in the tested dtype and device.
Tensors are captured in execution order under the same names on both sides:
embed_tokens; per layer i: layers.i.self_attn, layers.i.residual_attn, layers.i.mlp,
layers.i (after the MLP residual); norm.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TINY = ("mha", "gqa", "mqa", "tied", "untied", "headdim", "llama3rope", "odd", "sharded")
DEFAULT_MODELS = tuple(f"tiny-{n}" for n in TINY) + ("smollm2",)
TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def resolve_model(name: str) -> Path:
    """A fixture name (tiny-<variant>, smollm2) or a path to a local HF LLaMA directory."""
    if name.startswith("tiny-"):
        from infinilm_fixtures.tiny import ensure

        return ensure(name.removeprefix("tiny-"))
    if name == "smollm2":
        from infinilm_fixtures.smollm2 import ensure

        return ensure()
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"--model {name!r}: neither a fixture name ({', '.join(DEFAULT_MODELS)}) nor a "
            "directory holding config.json")
    return path


def model_names(option: str | None) -> list[str]:
    raw = option or os.environ.get("INFINILM_MODELS") or ",".join(DEFAULT_MODELS)
    return [m.strip() for m in raw.split(",") if m.strip()]


def torch_device(infini_device: str) -> str:
    """Where the same-dtype reference runs: the matching torch device when there is one."""
    import torch

    kind = infini_device.split(":")[0]
    if kind == "nvidia" and torch.cuda.is_available():
        return "cuda:" + (infini_device.split(":")[1] if ":" in infini_device else "0")
    return "cpu"


@functools.lru_cache(maxsize=4)
def hf_model(path: str, dtype: str, device: str):
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(
        path, dtype=getattr(torch, TORCH_DTYPES[dtype]), attn_implementation="eager")
    return model.to(device).eval()


@functools.lru_cache(maxsize=3)
def our_model(path: str, dtype: str, device: str, model_cls=None):
    from infinilm_models import AutoLlamaModel

    if model_cls is not None:
        return model_cls.from_pretrained(path, device, dtype, progress=False)
    return AutoLlamaModel.from_pretrained(path, device, dtype, progress=False)


def hf_capture(model, ids: np.ndarray, *, cache=None) -> tuple[dict[str, np.ndarray], object]:
    """Run transformers with hooks; returns float64 host copies named as ours, and the
    output (logits [batch, seq, vocab] in float64 under 'logits')."""
    import torch

    got: dict[str, np.ndarray] = {}
    hooks = []

    def keep(name):
        def hook(_module, _inputs, output):
            t = output[0] if isinstance(output, tuple) else output
            got[name] = t.detach().to("cpu", torch.float64).numpy()
        return hook

    inner = model.model
    hooks.append(inner.embed_tokens.register_forward_hook(keep("embed_tokens")))
    for i, layer in enumerate(inner.layers):
        hooks.append(layer.self_attn.register_forward_hook(keep(f"layers.{i}.self_attn")))
        hooks.append(layer.mlp.register_forward_hook(keep(f"layers.{i}.mlp")))
        hooks.append(layer.register_forward_hook(keep(f"layers.{i}")))
    hooks.append(inner.norm.register_forward_hook(keep("norm")))
    try:
        with torch.inference_mode():
            out = model(torch.tensor(ids, device=model.device), past_key_values=cache,
                        use_cache=cache is not None)
    finally:
        for h in hooks:
            h.remove()
    # The residual after attention is not a module output: rebuild it from its two terms.
    prev = got["embed_tokens"]
    for i in range(len(inner.layers)):
        got[f"layers.{i}.residual_attn"] = prev + got[f"layers.{i}.self_attn"]
        prev = got[f"layers.{i}"]
    got["logits"] = out.logits.detach().to("cpu", torch.float64).numpy()
    return got, out


def our_capture(model, ids: np.ndarray, *, cache=None) -> dict[str, np.ndarray]:
    got: dict[str, np.ndarray] = {}
    logits = model.forward(ids, cache=cache, all_logits=True, capture=got)
    got = {k: v.astype(np.float64) for k, v in got.items()}
    got["logits"] = logits.numpy().astype(np.float64)
    return got


def execution_order(num_layers: int) -> list[tuple[str, int | None, str]]:
    """(tensor name, layer, sub-module) in the order the forward produces them."""
    order: list[tuple[str, int | None, str]] = [("embed_tokens", None, "embedding")]
    for i in range(num_layers):
        order += [(f"layers.{i}.self_attn", i, "attention"),
                  (f"layers.{i}.residual_attn", i, "attention residual"),
                  (f"layers.{i}.mlp", i, "mlp"),
                  (f"layers.{i}", i, "mlp residual")]
    order.append(("norm", None, "final norm"))
    return order


# Ops each sub-module runs: where to look at the op-level results when it diverges.
OPS_OF = {
    "embedding": ["embedding (row copies)"],
    "attention": ["rms_norm", "gemm", "rope", "rearrange", "causal_softmax"],
    "attention residual": ["add"],
    "mlp": ["rms_norm", "gemm", "swiglu"],
    "mlp residual": ["add"],
    "final norm": ["rms_norm"],
}


@dataclass
class Divergence:
    tensor: str
    layer: int | None
    submodule: str
    nmse: float
    threshold: float

    def describe(self) -> str:
        where = f"layer {self.layer} {self.submodule}" if self.layer is not None \
            else self.submodule
        return (f"first divergence at {where} ({self.tensor}): NMSE {self.nmse:.3g} > "
                f"threshold {self.threshold:.3g}; op-level checks of the ops involved: "
                f"{', '.join(OPS_OF[self.submodule])}")
