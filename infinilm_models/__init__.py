"""LLaMA on InfiniCore.

runtime/     the InfiniCore binding (the only code that talks to the C library)
build/       building InfiniCore from a source, for any backend (python -m infinilm_models.build)
models/      model families; llama/ holds LlamaConfig, the modules, the loader, the KV cache;
             qwen2/, qwen3/, mistral/ reuse its blocks
generation   greedy and sampled decoding with the KV cache
"""

from importlib import import_module

# Resolved on first use, so that `python -m infinilm_models.build` needs nothing
# beyond the standard library and the model side's dependencies load only when used.
_EXPORTS = {
    "AutoLlamaModel": ".models", "AutoModel": ".models", "MODEL_REGISTRY": ".models",
    "LlamaConfig": ".models.llama", "LlamaForCausalLM": ".models.llama",
    "KVCache": ".models.llama",
    "GenerationConfig": ".generation", "GenerationOutput": ".generation",
    "generate": ".generation", "NonFiniteLogitsError": ".generation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
