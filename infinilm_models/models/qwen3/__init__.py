"""Qwen3: LLaMA's blocks with per-head q/k RMSNorm before RoPE (configuration.py)."""

from .configuration import Qwen3Config
from .modeling_qwen3 import Qwen3ForCausalLM

__all__ = ["Qwen3Config", "Qwen3ForCausalLM"]
