"""Mistral: LLaMA's blocks with a sliding attention window (configuration.py)."""

from .configuration import MistralConfig
from .modeling_mistral import MistralForCausalLM

__all__ = ["MistralConfig", "MistralForCausalLM"]
