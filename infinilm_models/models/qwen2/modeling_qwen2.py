"""Qwen2 on InfiniCore: LLaMA's modules on a Qwen2Config. Where the math differs (q/k/v
biases, sliding layers) the config says so (configuration.py) and the blocks read it."""

from __future__ import annotations

from ..llama.modeling_llama import LlamaForCausalLM
from .configuration import Qwen2Config


class Qwen2ForCausalLM(LlamaForCausalLM):
    config_class = Qwen2Config
