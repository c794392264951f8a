"""Qwen3 on InfiniCore: LLaMA's modules on a Qwen3Config; the attention runs its q_norm /
k_norm step (models/llama/attention.py) because the config asks for those weights."""

from __future__ import annotations

from ..llama.modeling_llama import LlamaForCausalLM
from .configuration import Qwen3Config


class Qwen3ForCausalLM(LlamaForCausalLM):
    config_class = Qwen3Config
