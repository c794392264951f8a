"""One small wrapper per InfiniCore op (the rows of specs.py). Ops a build does not export
raise `NotExported` (an unsupported status) when called."""

from ._base import describe_only
from .activation import silu, silu_and_mul
from .add_rms_norm import add_rms_norm
from .attention import attention
from .causal_softmax import causal_softmax, prepare_causal_softmax
from .elementwise import add, mul
from .embedding import embedding
from .gemm import gemm, prepare_gemm
from .kv_cache_ops import kv_caching, paged_attention, paged_attention_prefill, paged_caching
from .random_sample import random_sample, random_sample_batch
from .rearrange import contiguous, copy, rearrange
from .rms_norm import rms_norm
from .rope import RoPEAlgo, rope
from .swiglu import swiglu
from .topk import topk

__all__ = [
    "RoPEAlgo", "add", "add_rms_norm", "attention", "causal_softmax", "contiguous", "copy",
    "describe_only", "embedding", "gemm", "kv_caching", "mul", "paged_attention",
    "paged_attention_prefill", "paged_caching", "prepare_causal_softmax", "prepare_gemm",
    "random_sample", "random_sample_batch", "rearrange", "rms_norm", "rope", "silu",
    "silu_and_mul", "swiglu", "topk",
]
