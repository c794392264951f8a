"""Model families on InfiniCore; each is a folder (llama/, qwen2/, qwen3/, mistral/)
registered in auto.py."""

from .auto import MODEL_REGISTRY, AutoLlamaModel, AutoModel

__all__ = ["MODEL_REGISTRY", "AutoLlamaModel", "AutoModel"]
