"""transformers' side of the model checks, computed once and shared.

The golden and the same-dtype reference outputs for a checkpoint, an input, a dtype and a
capture set do not depend on the backend under test, yet every check and every xdist
worker used to compute them again. `cached` memoizes such a computation on disk:

    @cached
    def hf_forward(model: Reference, ids: np.ndarray, ...) -> dict[str, np.ndarray]: ...

The key is a digest of the function (module, name, RECIPE), the versions of torch and
transformers, and every argument: a `Reference` by its checkpoint's content digest, its
dtype and the device it runs on (a GPU by its name); arrays by dtype, shape and bytes.
Changing any of them computes anew. Entries are written to a temporary file and renamed,
and a lock file serializes the computation of one key, so concurrent workers compute it
once and never read a partial entry. `--no-reference-cache` keeps the sharing within the
run (a cache folder inside the run directory) but reuses nothing from earlier runs.

Values are nested dicts, lists and tuples of arrays and numbers, stored as .npz with their
structure in JSON (never pickle: the cache folder is data, not code).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RECIPE = 1  # bump when what a cached function computes changes without its arguments
CACHE_ENV = "INFINILM_REFERENCE_CACHE"  # the folder; set by the plugin for every process
TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64"}


def cache_dir() -> Path | None:
    value = os.environ.get(CACHE_ENV)
    if value == "off":
        return None
    if value:
        return Path(value)
    from infinilm_models.build.prefix import cache_home

    return cache_home() / "reference"


# -- what a reference is: a checkpoint run by transformers in a dtype on a device -----------


@dataclass(frozen=True)
class Reference:
    """transformers' model for (checkpoint, dtype, device), loaded only when a
    computation needs it (a cache hit never loads the model). `variant`: "" for
    transformers as it is, or faithful.VARIANT for the second correct half-precision
    implementation (every gemm rounded the other way)."""

    path: str
    dtype: str
    device: str
    variant: str = ""

    @property
    def model(self):
        if self.variant:
            from .faithful import VARIANT

            if self.variant != VARIANT:
                raise ValueError(f"unknown reference variant {self.variant!r}")
            return faithful_model(self.path, self.dtype, self.device)
        return hf_model(self.path, self.dtype, self.device)

    def key(self) -> dict:
        key = {"checkpoint": checkpoint_digest(self.path), "dtype": self.dtype,
               "device": device_identity(self.device)}
        if self.variant:  # transformers' own keys stay what they were
            from .faithful import RECIPE

            key["variant"] = f"{self.variant} {RECIPE}"
        return key

    def describe(self) -> str:
        what = f"transformers {TORCH_DTYPES[self.dtype]} on {self.device}"
        return f"{what}, every gemm rounded the other way" if self.variant else what


@functools.lru_cache(maxsize=4)
def hf_model(path: str, dtype: str, device: str):
    """transformers' class for the checkpoint's model_type (AutoModelForCausalLM:
    LlamaForCausalLM, Qwen2ForCausalLM, ...) in a dtype on a device, eager attention (the
    reference computation, no fused kernel of its own)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, TORCH_DTYPES[dtype]), attn_implementation="eager")
    return model.to(device).eval()


@functools.lru_cache(maxsize=2)
def faithful_model(path: str, dtype: str, device: str):
    """The second correct half-precision implementation (faithful.py): a model of its own,
    every gemm rounded the other way."""
    from .faithful import make_faithful

    return make_faithful(hf_model.__wrapped__(path, dtype, device), dtype)


@functools.cache
def device_identity(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        index = int(device.partition(":")[2] or 0)
        return f"{device} {torch.cuda.get_device_name(index)}"
    return device


_digests: dict[tuple, str] = {}


def checkpoint_digest(path: str | Path) -> str:
    """sha256 of a checkpoint directory's config and weights (content, not dates); one
    digest per process per unchanged file set."""
    root = Path(path)
    files = sorted(p for p in root.iterdir() if p.is_file() and
                   (p.suffix in (".safetensors", ".json", ".bin") or p.name == "tokenizer.model"))
    stat = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(root.resolve()), stat)
    found = _digests.get(key)
    if found is None:
        from infinilm_models.build.prefix import sha256_file

        h = hashlib.sha256()
        for p in files:
            h.update(p.name.encode() + b"\0" + sha256_file(p).encode() + b"\n")
        found = _digests[key] = h.hexdigest()
    return found


# -- keys ----------------------------------------------------------------------------------


class Uncacheable(Exception):
    pass


def _digestible(v: Any) -> Any:
    if isinstance(v, Reference):
        return {"reference": v.key()}
    if isinstance(v, np.ndarray):
        return {"array": [str(v.dtype), list(v.shape),
                          hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()]}
    if isinstance(v, dict):
        return {"dict": [[str(k), _digestible(x)] for k, x in sorted(v.items(), key=str)]}
    if isinstance(v, (list, tuple)):
        return {type(v).__name__: [_digestible(x) for x in v]}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, np.generic):
        return v.item()
    raise Uncacheable(type(v).__name__)


@functools.lru_cache(maxsize=1)
def _versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__}


def key_of(fn: Callable, args: tuple, kwargs: dict) -> str:
    doc = {"fn": f"{fn.__module__}.{fn.__qualname__}", "recipe": RECIPE,
           "versions": _versions(), "args": _digestible(list(args)),
           "kwargs": _digestible(kwargs)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# -- values --------------------------------------------------------------------------------


def _flatten(v: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(v, np.ndarray):
        name = f"a{len(arrays)}"
        # float64 copies of float32/half values are exact in float32: half the bytes on
        # disk (SmolLM2's logits of 130 positions are 51 MB in float64), restored on load
        if v.dtype == np.float64 and np.array_equal(v.astype(np.float32), v, equal_nan=True):
            arrays[name] = v.astype(np.float32)
            return {"$array": name, "f64": True}
        arrays[name] = v
        return {"$array": name}
    if isinstance(v, dict):
        return {"$dict": [[k, _flatten(x, arrays)] for k, x in v.items()]}
    if isinstance(v, (list, tuple)):
        return {f"${type(v).__name__}": [_flatten(x, arrays) for x in v]}
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise Uncacheable(type(v).__name__)


def _unflatten(v: Any, arrays) -> Any:
    if isinstance(v, dict):
        if "$array" in v:
            a = arrays[v["$array"]]
            return a.astype(np.float64) if v.get("f64") else a
        if "$dict" in v:
            return {k: _unflatten(x, arrays) for k, x in v["$dict"]}
        if "$list" in v:
            return [_unflatten(x, arrays) for x in v["$list"]]
        if "$tuple" in v:
            return tuple(_unflatten(x, arrays) for x in v["$tuple"])
    return v


def _load(path: Path) -> Any:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__structure__"}
        structure = json.loads(bytes(z["__structure__"]).decode())
    return _unflatten(structure, arrays)


def _store(path: Path, value: Any) -> None:
    arrays: dict[str, np.ndarray] = {}
    structure = _flatten(value, arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __structure__=np.frombuffer(json.dumps(structure).encode(), np.uint8),
                     **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _locked(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


stats = {"hits": 0, "misses": 0}  # this process's, for tests and the record


def cached(fn: Callable) -> Callable:
    """Memoize `fn` on disk by its arguments (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        folder = cache_dir()
        if folder is None:
            return fn(*args, **kwargs)
        try:
            key = key_of(fn, args, kwargs)
        except Uncacheable:
            return fn(*args, **kwargs)
        entry = folder / key[:2] / f"{key}.npz"
        for attempt in (1, 2):
            if entry.is_file():
                try:
                    value = _load(entry)
                    stats["hits"] += 1
                    return value
                except (OSError, ValueError, KeyError):  # unreadable: compute it anew
                    entry.unlink(missing_ok=True)
            if attempt == 2:
                break
            with _locked(entry.with_suffix(".lock")):
                if entry.is_file():
                    continue  # another worker computed it while this one waited
                value = fn(*args, **kwargs)
                stats["misses"] += 1
                try:
                    _store(entry, value)
                except Uncacheable:
                    pass
                return value
        return fn(*args, **kwargs)

    wrapper.uncached = fn
    return wrapper
