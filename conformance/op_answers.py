"""Inputs and float64 answers for an op call known only by its signature (a model's
distinct calls, `python -m conformance.gguf_cases model`): the op's definition in numpy
float64, as the op checks state it, on seeded random inputs rounded to their dtype.

An op call here is its C op name (specs.py), its tensors in the C order as
(name, dtype, shape, strides), and its scalars. `inputs` draws values for the tensors the
op reads; `answer` gives the float64 result of each tensor it writes. Ops without a
definition here (the KV-cache and paged ops, samplers) raise KeyError.
"""

from __future__ import annotations

import numpy as np

from infinilm_models.runtime import DType

# C op -> the tensors it writes (the rest are read); Gemm reads its C too when beta != 0.
OUTPUTS = {"Gemm": ("c",), "RMSNorm": ("y",), "RoPE": ("y",), "CausalSoftmax": ("y",),
           "SwiGLU": ("c",), "Add": ("c",), "Mul": ("c",), "Rearrange": ("dst",),
           "AddRMSNorm": ("y", "residual_out"), "Silu": ("output",),
           "SiluAndMul": ("output",), "Embedding": ("output",)}


def rounded(values: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values exactly representable in `dtype`."""
    npd = DType.parse(dtype).numpy
    if np.issubdtype(npd, np.integer):
        return np.rint(values).astype(npd).astype(np.float64)
    return values.astype(np.float32).astype(npd).astype(np.float64)


def inputs(op: str, tensors: dict[str, tuple[str, list[int]]], rng: np.random.Generator,
           scalars: dict[str, float]) -> dict[str, np.ndarray]:
    """Values (float64, rounded to each tensor's dtype) of every tensor `op` reads."""
    if op not in OUTPUTS:
        raise KeyError(op)
    out = {}
    for name, (dtype, shape) in tensors.items():
        if name in OUTPUTS[op] and not (op == "Gemm" and scalars.get("beta", 0.0)):
            continue
        if op == "RoPE" and name == "pos_ids":
            rows = tensors["sin_table"][1][0]
            out[name] = rng.integers(0, rows, size=shape).astype(np.float64)
        elif op == "Embedding" and name == "input":
            rows = tensors["weight"][1][0]
            out[name] = rng.integers(0, rows, size=shape).astype(np.float64)
        elif op == "Gemm" and name == "b":
            out[name] = rounded(rng.standard_normal(shape) / np.sqrt(shape[-2]), dtype)
        elif name in ("w", "weight") and op != "Embedding":
            out[name] = rounded(1.0 + 0.2 * rng.standard_normal(shape), dtype)
        else:
            out[name] = rounded(rng.standard_normal(shape), dtype)
    return out


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x, pos, sin, cos, algo: int) -> np.ndarray:
    heads, d = x.shape[-2:]
    rows = np.broadcast_to(pos, x.shape[:-2]).reshape(-1).astype(np.int64)
    flat = x.reshape(-1, heads, d)
    s, c = sin[rows][:, None, :], cos[rows][:, None, :]
    if algo == 1:  # GPT-NeoX: halves
        x1, x2 = flat[..., : d // 2], flat[..., d // 2:]
        out = np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)
    else:  # GPT-J: interleaved pairs
        x1, x2 = flat[..., 0::2], flat[..., 1::2]
        out = np.empty_like(flat)
        out[..., 0::2], out[..., 1::2] = x1 * c - x2 * s, x1 * s + x2 * c
    return out.reshape(x.shape)


def _causal_softmax(x: np.ndarray) -> np.ndarray:
    q, k = x.shape[-2:]
    mask = np.arange(k)[None, :] <= (k - q + np.arange(q))[:, None]
    z = np.where(mask, x, -np.inf)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def answer(op: str, v: dict[str, np.ndarray], scalars: dict[str, float]
           ) -> dict[str, np.ndarray]:
    """The float64 result of each tensor `op` writes, from the values it reads."""
    if op == "Gemm":
        out = scalars.get("alpha", 1.0) * np.matmul(v["a"], v["b"])
        return {"c": out + scalars["beta"] * v["c"] if scalars.get("beta") else out}
    if op == "RMSNorm":
        return {"y": _rms(v["x"], v["w"], scalars["epsilon"])}
    if op == "RoPE":
        return {"y": _rope(v["x"], v["pos_ids"], v["sin_table"], v["cos_table"],
                           int(scalars["algo"]))}
    if op == "CausalSoftmax":
        return {"y": _causal_softmax(v["x"])}
    if op == "SwiGLU":
        return {"c": v["up"] * _silu(v["gate"])}
    if op == "Add":
        return {"c": v["a"] + v["b"]}
    if op == "Mul":
        return {"c": v["a"] * v["b"]}
    if op == "Rearrange":
        return {"dst": v["src"]}
    if op == "AddRMSNorm":
        r = v["a"] + v["b"]
        return {"y": _rms(r, v["weight"], scalars["epsilon"]), "residual_out": r}
    if op == "Silu":
        return {"output": _silu(v["input"])}
    if op == "SiluAndMul":
        d = v["input"].shape[-1] // 2
        return {"output": _silu(v["input"][..., :d]) * v["input"][..., d:]}
    if op == "Embedding":
        return {"output": v["weight"][v["input"].astype(np.int64)]}
    raise KeyError(op)
