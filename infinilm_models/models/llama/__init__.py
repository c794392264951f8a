"""LLaMA on InfiniCore: configuration, modules (HF names), loading, KV cache."""

from .configuration import ConfigError, LlamaConfig
from .kv_cache import CacheOverflowError, KVCache
from .loading import CheckpointError
from .modeling_llama import LlamaForCausalLM, LlamaModel

__all__ = [
    "CacheOverflowError", "CheckpointError", "ConfigError", "KVCache", "LlamaConfig",
    "LlamaForCausalLM", "LlamaModel",
]
