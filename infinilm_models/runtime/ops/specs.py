"""Every InfiniCore operator this project binds, as data: one row per op.

A row drives the ctypes declarations (library.py declares the rows a build exports and
leaves the others unbound), `CachedOp` (descriptor creation, workspace, compute call),
and the names the crash supervisor and the coverage list use. Adding an op is one row
here and a short wrapper function beside the others.

C functions of an op `X` by default: infiniopCreateXDescriptor(handle, &desc, tensor
descriptors..., create scalars...), infiniopGetXWorkspaceSize(desc, &size),
infiniopX(desc, [workspace, size,] tensor pointers..., compute scalars..., stream),
infiniopDestroyXDescriptor(desc).
"""

from __future__ import annotations

from ctypes import POINTER, c_bool, c_float, c_int, c_size_t, c_void_p
from dataclasses import dataclass


@dataclass(frozen=True)
class OpSpec:
    name: str  # the C name: infiniop<name>
    py: str  # the wrapper function in runtime.ops
    tensors: tuple[str, ...]  # tensor arguments, in the C order
    create: tuple = ()  # ctypes of the creation scalars after the tensor descriptors
    compute: tuple = ()  # ctypes of the compute scalars after the tensor pointers
    workspace: bool = True
    optional: tuple[str, ...] = ()  # tensors that may be None (a NULL descriptor/pointer)
    # Functions named otherwise than the defaults (a variant sharing another's descriptor)
    workspace_fn: str | None = None
    destroy_fn: str | None = None

    @property
    def create_fn(self) -> str:
        return f"infiniopCreate{self.name}Descriptor"

    @property
    def compute_fn(self) -> str:
        return f"infiniop{self.name}"

    @property
    def size_fn(self) -> str | None:
        if not self.workspace:
            return None
        return self.workspace_fn or f"infiniopGet{self.name}WorkspaceSize"

    @property
    def free_fn(self) -> str:
        return self.destroy_fn or f"infiniopDestroy{self.name}Descriptor"

    @property
    def functions(self) -> tuple[str, ...]:
        """Every C function the op needs; a build exports the op iff it exports these."""
        return tuple(f for f in (self.create_fn, self.size_fn, self.compute_fn, self.free_fn)
                     if f)


_F32_P = POINTER(c_float)
SPECS: tuple[OpSpec, ...] = (
    # InfiniCore 0.1.0's ops (the model's).
    OpSpec("Gemm", "gemm", ("c", "a", "b"), compute=(c_float, c_float)),
    OpSpec("RMSNorm", "rms_norm", ("y", "x", "w"), create=(c_float,)),
    OpSpec("RoPE", "rope", ("y", "x", "pos_ids", "sin_table", "cos_table"), create=(c_int,)),
    OpSpec("CausalSoftmax", "causal_softmax", ("y", "x")),
    OpSpec("SwiGLU", "swiglu", ("c", "up", "gate")),
    OpSpec("Add", "add", ("c", "a", "b")),
    OpSpec("Mul", "mul", ("c", "a", "b")),
    OpSpec("Rearrange", "rearrange", ("dst", "src"), workspace=False),
    OpSpec("RandomSample", "random_sample", ("result", "logits"),
           compute=(c_float, c_float, c_int, c_float)),
    OpSpec("Attention", "attention", ("out", "q", "k", "v", "k_cache", "v_cache"),
           create=(c_size_t,)),
    # Later InfiniCore's LLaMA-path ops (absent from 0.1.0).
    OpSpec("AddRMSNorm", "add_rms_norm", ("y", "residual_out", "a", "b", "weight"),
           create=(c_float,)),
    OpSpec("Embedding", "embedding", ("output", "input", "weight"), workspace=False),
    OpSpec("Silu", "silu", ("output", "input")),
    OpSpec("SiluAndMul", "silu_and_mul", ("output", "input")),
    OpSpec("TopK", "topk", ("values", "indices", "input"),
           create=(c_size_t, c_size_t, c_bool, c_bool),
           compute=(c_size_t, c_size_t, c_bool, c_bool)),
    # One descriptor type with RandomSample; per-row parameters as host arrays.
    OpSpec("RandomSampleBatch", "random_sample_batch", ("result", "logits"),
           compute=(_F32_P, _F32_P, POINTER(c_int), _F32_P, c_int),
           workspace_fn="infiniopGetRandomSampleWorkspaceSize",
           destroy_fn="infiniopDestroyRandomSampleDescriptor"),
    OpSpec("KVCaching", "kv_caching", ("k_cache", "v_cache", "k", "v", "past_kv_lengths")),
    OpSpec("PagedCaching", "paged_caching", ("k_cache", "v_cache", "k", "v", "slot_mapping")),
    OpSpec("PagedAttention", "paged_attention",
           ("out", "q", "k_cache", "v_cache", "block_tables", "seq_lens", "alibi_slopes"),
           create=(c_float,), optional=("alibi_slopes",)),
    OpSpec("PagedAttentionPrefill", "paged_attention_prefill",
           ("out", "q", "k_cache", "v_cache", "block_tables", "seq_lens", "cum_seq_lens_q",
            "alibi_slopes"), create=(c_float,), optional=("alibi_slopes",)),
)
BY_NAME = {s.name: s for s in SPECS}
BY_PY = {s.py: s for s in SPECS}


def spec(name: str) -> OpSpec:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no op spec {name!r}; known: {sorted(BY_NAME)}") from None


def argtypes(s: OpSpec) -> dict[str, list]:
    """C function name -> argtypes, for library.py's declarations."""
    P, PP, SIZE_P = c_void_p, POINTER(c_void_p), POINTER(c_size_t)
    ws = [P, c_size_t] if s.workspace else []
    out = {
        s.create_fn: [P, PP, *([P] * len(s.tensors)), *s.create],
        s.compute_fn: [P, *ws, *([P] * len(s.tensors)), *s.compute, P],
        s.free_fn: [P],
    }
    if s.size_fn:
        out[s.size_fn] = [P, SIZE_P]
    return out
