"""Mistral on InfiniCore: LLaMA's modules on a MistralConfig; every layer's attention has
the config's sliding window (models/llama/attention.py narrows and masks by it)."""

from __future__ import annotations

from ..llama.modeling_llama import LlamaForCausalLM
from .configuration import MistralConfig


class MistralForCausalLM(LlamaForCausalLM):
    config_class = MistralConfig
