"""Qwen2: LLaMA's blocks with q/k/v biases (configuration.py says where it differs)."""

from .configuration import Qwen2Config
from .modeling_qwen2 import Qwen2ForCausalLM

__all__ = ["Qwen2Config", "Qwen2ForCausalLM"]
