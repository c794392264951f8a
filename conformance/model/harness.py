"""Model-level comparison machinery: which checkpoints, the three runtimes, captured tensors.

Three runs of the same checkpoint on the same token ids:
  * golden  – transformers' model of the checkpoint's model_type (AutoModelForCausalLM:
              LlamaForCausalLM, Qwen2ForCausalLM, ...; eager attention): float32 on the CPU
              for a CPU run, float64 for an accelerator (on its torch device where float64
              works there, else on the CPU: conformance/placement.py);
  * ref     – transformers in the tested dtype, on the torch device InfiniCore's own tests
              map the tested device to, where that backend works (else the CPU; its error
              against golden is what that dtype costs a mature implementation);
  * ours    – infinilm_models on InfiniCore in the tested dtype and device.
Tensors are captured under the names of the model package's declared capture points
(`infinilm_models.models.llama.capture`), on both sides, also while decoding with a
cache. An isolated run feeds every sub-module the golden run's own input (injected at
each capture point), on both sides: a sub-module that computes wrong shows there, while
error that only grew on its way from earlier layers does not.
"""

from __future__ import annotations

import functools
import os
import weakref
from pathlib import Path

import numpy as np

from infinilm_models.models.llama.capture import CapturePoint, capture_points

from .. import fresh
from ..placement import golden_placement, torch_device  # noqa: F401 - the harness's API
from .reference import TORCH_DTYPES, Reference, cached, hf_model  # noqa: F401 - re-exported

TINY = ("mha", "gqa", "mqa", "tied", "untied", "headdim", "llama3rope", "odd", "sharded",
        # the families sharing LLaMA's blocks and the LLaMA options beyond the first nine
        "qwen2", "qwen3", "mistral", "bias", "longrope", "dynamic")
DEFAULT_MODELS = tuple(f"tiny-{n}" for n in TINY) + ("smollm2",)


def resolve_model(name: str) -> Path:
    """A fixture name (tiny-<variant>, smollm2) or a path to a local HF LLaMA directory."""
    if name.startswith("tiny-"):
        from infinilm_fixtures.tiny import ensure

        return ensure(name.removeprefix("tiny-"))
    if name == "smollm2":
        from infinilm_fixtures.smollm2 import ensure

        return ensure()
    path = Path(name).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"--model {name!r}: neither a fixture name ({', '.join(DEFAULT_MODELS)}) nor a "
            "directory")
    check_checkpoint_files(path)
    return path


def check_checkpoint_files(path: Path) -> None:
    """Every file of a checkpoint directory that a check may open, ours or transformers
    (which would wait forever on a pipe), checked to be a regular file first: one line
    naming the file and what it is (infinilm_models/files.py)."""
    from infinilm_models.files import check_file, present
    from infinilm_models.models.llama.configuration import ConfigError
    from infinilm_models.models.llama.loading import weights_files

    check_file(path / "config.json", ConfigError)
    for optional in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        if present(path / optional):
            check_file(path / optional)
    weights_files(path)  # the loader's own rules: every weights file and the index


def model_names(option: str | None) -> list[str]:
    raw = option or os.environ.get("INFINILM_MODELS") or ",".join(DEFAULT_MODELS)
    return [m.strip() for m in raw.split(",") if m.strip()]


@functools.cache
def reference(path: str, dtype: str, device: str) -> Reference:
    """The (lazy) transformers run of a checkpoint in a dtype on a device; one object per
    triple, so `ref is golden` says they are the same run."""
    return Reference(path, dtype, device)


# Every model the checks of this process reuse (ours, parallel, benchmarked): reset when a
# check starts (fresh.py).
_reused: weakref.WeakSet = weakref.WeakSet()


def reused(model):
    """`model`, kept for later checks: its buffers are zeroed before each check."""
    _reused.add(model)
    return model


@fresh.on_check_start
def _reset_reused() -> None:
    for model in list(_reused):
        model.reset_buffers()


def reset_rope_state(model) -> None:
    """Put a model's RoPE frequencies back to their state at load, on either side. Dynamic
    RoPE keeps the frequencies of the longest forward so far (transformers' state machine,
    which ours follows), so a computation that passes max_position_embeddings depends on
    what ran before it; the checks that do start both sides from the loaded state."""
    if isinstance(model, Reference):
        model = model.model
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is not None and hasattr(rotary, "original_inv_freq"):  # transformers
        rotary.inv_freq = rotary.original_inv_freq.clone()
        rotary.max_seq_len_cached = rotary.original_max_seq_len
    for rank in getattr(model, "ranks", [model]):  # ours, one model or a parallel one
        if hasattr(rank, "rotary_emb"):
            rank.rotary_emb.reset()


@functools.lru_cache(maxsize=6)  # fused and plain of three dtypes
def our_model(path: str, dtype: str, device: str, model_cls=None, fused: str = "auto",
              max_cache_len: int | None = None):
    """Ours as a user gets it (`fused` "auto": the fused ops the build has), or with
    "plain", the op sequence of InfiniCore 0.1.0 (the fused path's reference);
    `max_cache_len` as from_pretrained's (default: what the checkpoint allows)."""
    from infinilm_models import AutoLlamaModel

    cls = model_cls if model_cls is not None else AutoLlamaModel
    return reused(cls.from_pretrained(path, device, dtype, progress=False, fused=fused,
                                      max_cache_len=max_cache_len))


def points_of(model) -> list[CapturePoint]:
    """The model's capture points, their ops those of the fusion plan it runs."""
    return capture_points(model.config.num_hidden_layers, fused=getattr(model, "fused", None))


# -- transformers side ----------------------------------------------------------------------


def hf_cache_kv(cache, layer: int):
    """(keys, values) of one layer of a DynamicCache, across transformers versions."""
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]


def hf_capture(model, ids: np.ndarray, *, cache=None, inject: dict | None = None,
               position_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Run transformers with hooks: float64 host copies under the capture point names
    (caches included when a cache is given), and the logits [batch, seq, vocab]. With
    `inject`, the value of each named point is replaced right after it is produced."""
    import torch

    if isinstance(model, Reference):
        model = model.model
    got: dict[str, np.ndarray] = {}
    hooks = []
    n_layers = len(model.model.layers)

    def out_hook(name):
        def hook(_module, _inputs, output):
            t = output[0] if isinstance(output, tuple) else output
            got[name] = t.detach().to("cpu", torch.float64).numpy()
            if inject and name in inject:
                new = torch.as_tensor(inject[name], dtype=t.dtype, device=t.device)
                return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new
            return None
        return hook

    def residual_hook(name):  # the residual after attention is no module's output
        def hook(_module, args, kwargs):
            if inject and name in inject:
                t = args[0] if args else kwargs["hidden_states"]
                new = torch.as_tensor(inject[name], dtype=t.dtype, device=t.device)
                return ((new,) + tuple(args[1:]), kwargs) if args else \
                    (args, {**kwargs, "hidden_states": new})
            return None
        return hook

    for p in capture_points(n_layers, caches=False):
        if p.hf_module is not None:
            module = model.get_submodule(p.hf_module)
            hooks.append(module.register_forward_hook(out_hook(p.name)))
        elif p.submodule == "attention residual":
            norm = model.get_submodule(f"model.layers.{p.layer}.post_attention_layernorm")
            hooks.append(norm.register_forward_pre_hook(residual_hook(p.name),
                                                        with_kwargs=True))
    kwargs = {}
    if position_ids is not None:
        kwargs["position_ids"] = torch.as_tensor(position_ids, device=model.device)
    try:
        with torch.inference_mode():
            out = model(torch.as_tensor(ids, device=model.device), past_key_values=cache,
                        use_cache=cache is not None, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    prev = (inject or {}).get("embed_tokens", got["embed_tokens"])
    for i in range(n_layers):
        got[f"layers.{i}.residual_attn"] = prev + got[f"layers.{i}.self_attn"]
        prev = (inject or {}).get(f"layers.{i}", got[f"layers.{i}"])
    got["logits"] = out.logits.detach().to("cpu", torch.float64).numpy()
    if cache is not None:
        for i in range(n_layers):
            k, v = hf_cache_kv(cache, i)
            got[f"layers.{i}.key_cache"] = k.detach().to("cpu", torch.float64).numpy()
            got[f"layers.{i}.value_cache"] = v.detach().to("cpu", torch.float64).numpy()
    return got


@cached
def hf_forward(ref: Reference, ids: np.ndarray, *, with_cache: bool = False,
               inject: dict | None = None) -> dict[str, np.ndarray]:
    """hf_capture of one forward from an empty cache (`with_cache`: a DynamicCache, whose
    K/V are captured too), computed once per run and reused across runs (reference.py)."""
    from transformers import DynamicCache

    return hf_capture(ref, ids, cache=DynamicCache() if with_cache else None, inject=inject)


@cached
def hf_decode(golden: Reference, ref: Reference | None, ids: np.ndarray, prefix: int
              ) -> list[dict[str, dict[str, np.ndarray]]]:
    """transformers' cached decoding of `ids`: the prefill of `prefix` tokens, then one
    token per step; per step the captures of the golden, of the reference (`ref` None: the
    golden is the reference) and of the reference isolated (each sub-module fed the
    golden's value)."""
    from transformers import DynamicCache

    caches = [DynamicCache() for _ in range(3)]
    runs = []
    for chunk in [ids[:, :prefix]] + [ids[:, i:i + 1] for i in range(prefix, ids.shape[1])]:
        g = hf_capture(golden, chunk, cache=caches[0])
        if ref is None:
            runs.append({"golden": g, "ref": g, "ref_iso": g})
            continue
        runs.append({"golden": g, "ref": hf_capture(ref, chunk, cache=caches[1]),
                     "ref_iso": hf_capture(ref, chunk, cache=caches[2], inject=g)})
    return runs


# -- our side ---------------------------------------------------------------------------------


def our_capture(model, ids: np.ndarray, *, cache=None, inject: dict | None = None
                ) -> dict[str, np.ndarray]:
    got: dict[str, np.ndarray] = {}
    logits = model.forward(ids, cache=cache, all_logits=True, capture=got, inject=inject)
    got = {k: v.astype(np.float64) for k, v in got.items()}
    got["logits"] = logits.numpy().astype(np.float64)
    if inject:
        # The injected values (the golden's) are in the buffers now: a later run must not
        # find right values there that its own ops did not write.
        model.reset_buffers()
    if cache is not None:
        for i in range(model.config.num_hidden_layers):
            k, v = cache.keys[i], cache.values[i]
            got[f"layers.{i}.key_cache"] = k.narrow(2, 0, cache.length).numpy().astype(
                np.float64)
            got[f"layers.{i}.value_cache"] = v.narrow(2, 0, cache.length).numpy().astype(
                np.float64)
    return got
