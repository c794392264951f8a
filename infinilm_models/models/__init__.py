"""Model families on InfiniCore; each is a folder (llama/) registered in auto.py."""

from .auto import MODEL_REGISTRY, AutoLlamaModel

__all__ = ["MODEL_REGISTRY", "AutoLlamaModel"]
