"""One small wrapper per InfiniCore op the LLaMA model uses."""

from .attention import attention
from .causal_softmax import causal_softmax, prepare_causal_softmax
from .elementwise import add, mul
from .gemm import gemm, prepare_gemm
from .random_sample import random_sample
from .rearrange import contiguous, copy, rearrange
from .rms_norm import rms_norm
from .rope import RoPEAlgo, rope
from .swiglu import swiglu

__all__ = [
    "RoPEAlgo", "add", "attention", "causal_softmax", "contiguous", "copy", "gemm", "mul",
    "prepare_causal_softmax", "prepare_gemm", "random_sample", "rearrange", "rms_norm",
    "rope", "swiglu",
]
