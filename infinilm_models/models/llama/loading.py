"""Strict loading of Hugging Face LLaMA safetensors checkpoints into host numpy arrays.

The loader is deliberately unforgiving: a checkpoint that does not match the model
exactly (missing, unexpected or mis-shaped tensors) is refused with one error that lists
every problem, because a silently half-loaded model produces plausible-looking garbage.

Layout rules follow transformers: ``model.safetensors`` wins over
``model.safetensors.index.json`` when both exist; a sharded checkpoint is read through
the index's ``weight_map``.

Tied embeddings (``tie_word_embeddings=True``):

* ``lm_head.weight`` absent: the result's ``lm_head.weight`` is the *same array object* as
  ``model.embed_tokens.weight``, so the two share memory (writing to one changes both).
* ``lm_head.weight`` present and equal to the embedding (after conversion): tied as above.
* present and different: transformers >= 5 then refuses to tie and uses the stored
  ``lm_head.weight``; we do the same (separate array) and emit a ``UserWarning``. The
  model must therefore always take its head from ``state["lm_head.weight"]``, never
  from the embedding because the config says "tied".

Every weights file must stay inside the model directory, whichever layout names it: the
single ``model.safetensors``, the index and each shard the index lists. Absolute paths and
``..`` in index entries are refused, and so is a symlink that resolves elsewhere, except
into a Hugging Face hub cache blob store (``.../models--org--name/blobs/``), which is how
every hub snapshot is laid out. Why one rule for all: a checkpoint directory is downloaded
data (a tarball or a git checkout can hold symlinks as easily as an index can hold paths),
and it must not be able to make us read arbitrary files. A weights file kept elsewhere on
purpose is copied (or hard-linked) into the directory.

Non-finite weights (NaN, +-Inf) are refused by default, naming the file, the tensor, how
many values and the first one's index: a NaN in any weight reaches every logit through
the residual stream and attention (all logits NaN, greedy decoding then returns token 0
forever), so a warning would let a run go on that can only produce garbage while looking
like a result. ``allow_nonfinite=True`` loads such a checkpoint anyway with a
``UserWarning`` per tensor, for diagnosing where the values come from (e.g. with
``forward(capture=...)``). The same holds for a value finite as stored that is not in
the run's dtype (a float64 1e300 in f32, bf16 or f16; a float32 70000 in f16): weights are
checked in the dtype the run uses, and the error names the tensor, the index, the stored
value and that dtype.

A mismatch report lists at most ``LIST_LIMIT`` entries per kind plus the counts: a
config.json claiming 10^6 layers against a 2-layer checkpoint once produced a 505 MB
message; it now names the first missing tensors and the layer counts on both sides.

Reading never needs torch: tensors come from ``safetensors.safe_open(...,
framework="numpy")``, which validates each header up front and returns BF16 as
``ml_dtypes.bfloat16`` (checked with safetensors 0.8); a safetensors too old to hand BF16
to numpy falls back to a raw read of the bytes the library has already validated.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import ml_dtypes
import numpy as np
from tqdm import tqdm

from ... import files

__all__ = [
    "EMBED_WEIGHT",
    "INDEX_FILE",
    "LM_HEAD_WEIGHT",
    "SINGLE_FILE",
    "CheckpointError",
    "load_state_dict",
    "weights_files",
]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
EMBED_WEIGHT = "model.embed_tokens.weight"
LM_HEAD_WEIGHT = "lm_head.weight"

# Weight formats we recognise only to give a better "not supported" message.
_UNSUPPORTED_FORMATS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.gguf")

_TARGET_DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype(np.float32),
    "f16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
}
# Storage dtypes a LLaMA weight may legitimately have; integer/fp8 tensors are a
# quantized or foreign checkpoint that this loader cannot interpret correctly.
_STORED_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
# Entries listed per kind of mismatch; the counts are always complete.
LIST_LIMIT = 20
# Elements per slice of the non-finite scan: bounds the temporary mask to 4 MB.
_SCAN_CHUNK = 1 << 22


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names the file (and tensor)."""


@dataclass(frozen=True)
class _TensorInfo:
    file: Path
    dtype: str  # safetensors dtype string, e.g. "BF16"
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _Layout:
    files: list[Path]
    # tensor name -> file it must come from; None for the single-file layout.
    weight_map: dict[str, Path] | None
    # What the user should look at when something is wrong: the index or the single file.
    source: Path


# ----------------------------------------------------------------------------- layout


def weights_files(model_dir: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files a checkpoint directory's weights live in, sorted by name.

    Raises CheckpointError for a missing directory, no weights, a broken index, index
    entries outside the directory, or listed shards that do not exist.
    """
    return _layout(Path(model_dir)).files


def _layout(model_dir: Path) -> _Layout:
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: not a directory (expected a checkpoint directory)")
    single = model_dir / SINGLE_FILE
    index = model_dir / INDEX_FILE
    # Same precedence as transformers, so both load the same bytes. A name that is there
    # but is no regular file (a pipe, a device, a looping link) is refused as what it is,
    # not skipped as if absent.
    if files.present(single):
        files.check_file(single, CheckpointError)
        _refuse_outside(model_dir, single)
        return _Layout(files=[single], weight_map=None, source=single)
    if files.present(index):
        files.check_file(index, CheckpointError)
        _refuse_outside(model_dir, index)
        return _layout_from_index(model_dir, index)
    others = [name for name in _UNSUPPORTED_FORMATS if (model_dir / name).exists()]
    hint = f"; found {', '.join(others)}, which is not supported (convert to safetensors)"
    raise CheckpointError(
        f"{model_dir}: no weights found; looked for {SINGLE_FILE} and {INDEX_FILE}"
        + (hint if others else "")
    )


def _layout_from_index(model_dir: Path, index: Path) -> _Layout:
    try:
        data = json.loads(files.read_text(index, CheckpointError))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{index}: invalid JSON ({exc})") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"{index}: no 'weight_map' object of tensor name -> file name")
    if not weight_map:
        raise CheckpointError(f"{index}: 'weight_map' is empty")

    tensors_of: dict[str, list[str]] = {}
    for name, entry in weight_map.items():
        tensors_of.setdefault(entry, []).append(name)

    problems: list[str] = []
    resolved: dict[str, Path] = {}
    for entry, names in tensors_of.items():
        what = f"weight_map entry {entry!r} (for {_describe_names(names)})"
        reason = _entry_reason(entry)
        path = model_dir / entry
        # The file's own check before resolve(): a looping link raises inside pathlib.
        problem = None if reason is not None else files.problem(path)
        if reason is None and problem is None:
            reason = _link_reason(model_dir, entry)
        if reason is not None:
            problems.append(f"{what} {reason}")
            continue
        if problem is not None:
            problems.append(f"{what}: shard file {path} {problem}")
            continue
        resolved[entry] = path
    if problems:
        raise CheckpointError(f"{index}: unusable shard entries:\n  " + "\n  ".join(problems))
    return _Layout(
        # Name order (model-00001-of-N first), not the index's alphabetical tensor order.
        files=sorted(resolved.values()),
        weight_map={name: resolved[entry] for name, entry in weight_map.items()},
        source=index,
    )


def _refuse_outside(model_dir: Path, path: Path) -> None:
    """The single-file and index rule of the module docstring, for a file found by name."""
    reason = _outside_reason(model_dir, path.name)
    if reason is not None:
        raise CheckpointError(
            f"{path}: {reason}; weights files must stay inside the checkpoint directory "
            "(copy the file in)")


def _outside_reason(model_dir: Path, entry: str) -> str | None:
    """Why an index entry may not be read, or None if it stays inside the checkpoint
    (`entry` must name a regular file: `files.check_file` first)."""
    return _entry_reason(entry) or _link_reason(model_dir, entry)


def _entry_reason(entry: str) -> str | None:
    """The rules on the entry's text alone."""
    # An index is downloaded data: it must not be able to make us read arbitrary files.
    if not entry:
        return "is empty"
    if PurePosixPath(entry).is_absolute() or PureWindowsPath(entry).is_absolute():
        return "is an absolute path, outside the model directory"
    if PureWindowsPath(entry).drive or ".." in PurePosixPath(entry.replace("\\", "/")).parts:
        return "points outside the model directory ('..')"
    return None


def _link_reason(model_dir: Path, entry: str) -> str | None:
    """Where the entry's symlinks lead, if that is outside the checkpoint."""
    target = (model_dir / entry).resolve()
    root = model_dir.resolve()
    if target.is_relative_to(root) or _in_hf_blob_store(target):
        return None
    return f"resolves (through a symlink) to {target}, outside the model directory {root}"


def _in_hf_blob_store(target: Path) -> bool:
    # A Hugging Face hub cache snapshot (.../models--org--name/snapshots/<rev>/) holds
    # only symlinks into .../models--org--name/blobs/, as did local_dir downloads of
    # older huggingface_hub; refusing those would refuse every cached model.
    blobs = target.parent
    return blobs.name == "blobs" and blobs.parent.name.startswith("models--")


def _describe_names(names: list[str]) -> str:
    if len(names) == 1:
        return f"tensor {names[0]!r}"
    return f"tensor {names[0]!r} and {len(names) - 1} more"


# ---------------------------------------------------------------------------- reading


def _safe_open() -> Any:
    try:
        from safetensors import safe_open
    except ImportError as exc:  # pragma: no cover - environment problem, not a test case
        raise ImportError(
            "loading checkpoints needs the 'safetensors' package (pip install safetensors)"
        ) from exc
    return safe_open


def _open_all(files: Iterable[Path], stack: ExitStack) -> dict[Path, Any]:
    safe_open = _safe_open()
    handles: dict[Path, Any] = {}
    failures: list[str] = []
    for path in files:
        try:
            # safe_open validates the whole header up front (length, JSON, dtypes,
            # offsets within the file), so a truncated or corrupt file fails here,
            # before any tensor is touched, instead of segfaulting on a bad mmap read.
            handles[path] = stack.enter_context(safe_open(str(path), framework="numpy"))
        except Exception as exc:  # SafetensorError, OSError, ...: all mean "bad file"
            failures.append(f"{path}: not a valid safetensors file ({exc})")
    if failures:
        raise CheckpointError("\n".join(failures))
    return handles


def _inventory(layout: _Layout, handles: Mapping[Path, Any]) -> dict[str, _TensorInfo]:
    """Tensor name -> where it is and what it looks like, from the headers only."""
    present: dict[str, _TensorInfo] = {}
    problems: list[str] = []
    for path, handle in handles.items():
        try:
            for name in handle.keys():
                if layout.weight_map is not None:
                    listed = layout.weight_map.get(name)
                    if listed is None:
                        problems.append(f"{path}: holds tensor {name!r}, which the index omits")
                        continue
                    if listed != path:
                        # The copy the index does not point at is never read.
                        continue
                view = handle.get_slice(name)
                present[name] = _TensorInfo(path, str(view.get_dtype()), tuple(view.get_shape()))
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read the tensor list ({exc})") from exc
    if layout.weight_map is not None:
        for name, path in layout.weight_map.items():
            if name not in present:
                problems.append(f"{path}: does not hold tensor {name!r}, though the index says so")
    if problems:
        raise CheckpointError(
            f"{layout.source}: index and shards disagree:\n  " + "\n  ".join(problems)
        )
    return present


def _read_tensor(handle: Any, path: Path, name: str, info: _TensorInfo,
                 part: tuple[int, int, int] | None = None) -> np.ndarray:
    index = None
    if part is not None:
        dim, start, stop = part
        index = (slice(None),) * dim + (slice(start, stop),)
    try:
        if index is not None:
            return np.ascontiguousarray(handle.get_slice(name)[index])
        return _library_get_tensor(handle, name)
    except Exception as exc:
        if info.dtype == "BF16":
            # Older safetensors cannot hand BF16 to numpy; the bytes themselves are fine.
            raw = _read_raw(path, name, info)
            return np.ascontiguousarray(raw[index]) if index is not None else raw
        raise CheckpointError(f"{path}: cannot read tensor {name!r} ({exc})") from exc


def _library_get_tensor(handle: Any, name: str) -> np.ndarray:
    return handle.get_tensor(name)


def _read_raw(path: Path, name: str, info: _TensorInfo) -> np.ndarray:
    """Read one tensor's bytes straight from the file (header already validated)."""
    dtype = _STORED_DTYPES[info.dtype]
    try:
        with path.open("rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(header_len))
            start, end = header[name]["data_offsets"]
            out = np.empty(info.shape, dtype=dtype)
            if end - start != out.nbytes:
                raise ValueError(f"data spans {end - start} bytes, shape needs {out.nbytes}")
            fh.seek(8 + header_len + start)
            if fh.readinto(memoryview(out.view(np.uint8).reshape(-1))) != out.nbytes:
                raise ValueError("file ends inside the tensor data")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot read tensor {name!r} ({exc})") from exc
    return out


def _check_finite(arr: np.ndarray, path: Path, name: str, allow: bool) -> None:
    """Refuse (or, with ``allow``, warn about) NaN/Inf among a tensor's stored values."""
    flat = arr.reshape(-1)
    bad = 0
    first: int | None = None
    for start in range(0, flat.size, _SCAN_CHUNK):
        mask = ~np.isfinite(flat[start:start + _SCAN_CHUNK])
        if mask.any():
            if first is None:
                first = start + int(np.argmax(mask))
            bad += int(np.count_nonzero(mask))
    if first is None:
        return
    where = tuple(int(i) for i in np.unravel_index(first, arr.shape))
    message = (f"{path}: tensor {name!r} holds {bad} non-finite value(s) out of {flat.size} "
               f"(first: {float(flat[first])} at index {list(where)})")
    _refuse_unless_allowed(message + "; a model with NaN/Inf weights can only produce NaN "
                           "or garbage logits", allow)


def _refuse_unless_allowed(message: str, allow: bool, stacklevel: int = 4) -> None:
    """A tensor that is not finite in this run: a CheckpointError naming it, or with
    allow_nonfinite a warning (a poisoned checkpoint loaded on purpose, for diagnosis)."""
    if allow:
        warnings.warn(message + "; loaded anyway (allow_nonfinite=True)", UserWarning,
                      stacklevel=stacklevel)
        return
    raise CheckpointError(message + ". Pass allow_nonfinite=True to from_pretrained (the "
                          "CLI: --allow-nonfinite) to load it anyway for diagnosis")


def _convert(arr: np.ndarray, target: np.dtype, path: Path, name: str,
             allow_nonfinite: bool = False) -> np.ndarray:
    """`arr` in the run's dtype, refusing a finite stored value that does not survive the
    conversion (`_check_converted`)."""
    if arr.dtype == target:
        return np.ascontiguousarray(arr)
    # Through float32: exact for f16/bf16 sources, and the single rounding step to
    # the target is then numpy's/ml_dtypes' round-to-nearest-even. Overflow (in either
    # step) is reported below, naming the tensor, instead of numpy's bare warning.
    with np.errstate(over="ignore", invalid="ignore"):
        wide = arr.astype(np.float32, copy=False)
        out = np.ascontiguousarray(wide.astype(target))
    if ml_dtypes.finfo(arr.dtype).max > ml_dtypes.finfo(target).max:  # may overflow
        _check_converted(arr, out, path, name, allow_nonfinite)
    return out


def _check_converted(stored: np.ndarray, out: np.ndarray, path: Path, name: str,
                     allow: bool) -> None:
    """Refuse (or, with ``allow``, warn about) values finite as stored but NaN/Inf in the
    run's dtype: a float64 1e300 is inf in f32, bf16 and f16, a float32 70000 is inf in
    f16. Every logit would be NaN, as with a stored NaN (`_check_finite`), so the same
    rule applies; stored NaN/Inf were reported there and are not counted again."""
    flat_out, flat_in = out.reshape(-1), stored.reshape(-1)
    bad = 0
    first: int | None = None
    for start in range(0, flat_out.size, _SCAN_CHUNK):
        chunk = slice(start, start + _SCAN_CHUNK)
        mask = ~np.isfinite(flat_out[chunk])
        if mask.any():
            mask &= np.isfinite(flat_in[chunk])
            if mask.any():
                if first is None:
                    first = start + int(np.argmax(mask))
                bad += int(np.count_nonzero(mask))
    if first is None:
        return
    where = [int(i) for i in np.unravel_index(first, out.shape)]
    value = float(flat_in[first])
    short = next(k for k, v in _TARGET_DTYPES.items() if v == out.dtype)
    limit = float(ml_dtypes.finfo(out.dtype).max)
    with np.errstate(over="ignore"):
        wide = np.float32(value)
        holds = [k for k, v in _TARGET_DTYPES.items()
                 if np.isfinite(wide) and np.isfinite(wide.astype(v))]
    hint = (f"load it as {' or '.join(holds)}" if holds
            else "no supported dtype (f32, f16, bf16) holds it")
    message = (f"{path}: tensor {name!r} holds {bad} value(s) out of {flat_out.size} that "
               f"are finite as stored ({stored.dtype}) but not in {out.dtype} ({short}), "
               f"the dtype of this run (first: {value!r} at index {where} becomes "
               f"{float(flat_out[first])}; {short}'s largest finite value is {limit:g}); "
               f"{hint}")
    _refuse_unless_allowed(message, allow, stacklevel=5)


# ------------------------------------------------------------------------------ check


def _vocab_hint(present: Mapping[str, _TensorInfo],
                expected: Mapping[str, tuple[int, ...]]) -> str | None:
    """config.json's vocab_size against the rows the embedding (or lm_head) holds."""
    want = expected.get(EMBED_WEIGHT)
    for name in (EMBED_WEIGHT, LM_HEAD_WEIGHT):
        info = present.get(name)
        if want and info is not None and len(info.shape) == 2 and info.shape[0] != want[0]:
            return (f"config.json says vocab_size = {want[0]}, but {name} in "
                    f"{info.file.name} has {info.shape[0]} rows: the config's vocab_size "
                    "must match the weights")
    return None


def _check(
    layout: _Layout,
    present: Mapping[str, _TensorInfo],
    expected: Mapping[str, tuple[int, ...]],
    tie_word_embeddings: bool,
) -> None:
    """Raise one CheckpointError listing every mismatch between checkpoint and model.

    Walks the checkpoint, not ``expected``: a config may claim far more tensors than any
    file holds (see `WeightShapes`), and the cost must stay that of the checkpoint.
    """
    unexpected: list[str] = []
    misshaped: list[str] = []
    bad_dtype: list[str] = []
    matched = 0
    for name, info in present.items():
        shape = expected.get(name)
        if shape is None:
            if tie_word_embeddings and name == LM_HEAD_WEIGHT:
                # Tied and the caller lists no lm_head: it must still look like the embedding.
                want = tuple(expected.get(EMBED_WEIGHT, info.shape))
                if info.shape != want:
                    misshaped.append(
                        f"{name} in {info.file.name}: got {info.shape}, expected {want}")
            else:
                unexpected.append(f"{name} {info.shape} in {info.file.name}")
            continue
        matched += 1
        if info.shape != tuple(shape):
            misshaped.append(
                f"{name} in {info.file.name}: got {info.shape}, expected {tuple(shape)}"
            )
        if info.dtype not in _STORED_DTYPES:
            bad_dtype.append(f"{name} in {info.file.name}: stored as {info.dtype}")

    tied_head_absent = (tie_word_embeddings and LM_HEAD_WEIGHT in expected
                        and LM_HEAD_WEIGHT not in present)
    missing_count = len(expected) - matched - int(tied_head_absent)
    missing: list[str] = []
    if missing_count:
        # The first LIST_LIMIT in HF order: at most len(present) + LIST_LIMIT names visited.
        for name in expected:
            if name not in present and not (tie_word_embeddings and name == LM_HEAD_WEIGHT):
                missing.append(f"{name} {tuple(expected[name])}")
                if len(missing) == LIST_LIMIT:
                    break

    sections = [
        ("missing", missing, missing_count),
        ("unexpected", unexpected, len(unexpected)),
        ("wrong shape", misshaped, len(misshaped)),
        ("unsupported storage dtype (want F32/F16/BF16/F64)", bad_dtype, len(bad_dtype)),
    ]
    found = [section for section in sections if section[2]]
    if not found:
        return
    summary = ", ".join(f"{count} {title.split(' (')[0]}" for title, _, count in found)
    lines = [f"{layout.source}: checkpoint does not match the model ({summary}):"]
    hint = _layer_hint(present, expected)
    if hint:
        lines.append(f"  {hint}")
    hint = _vocab_hint(present, expected)
    if hint:
        lines.append(f"  {hint}")
    for title, items, count in found:
        lines.append(f"  {title}:")
        lines.extend(f"    {item}" for item in items[:LIST_LIMIT])
        if count > LIST_LIMIT:
            lines.append(f"    ... and {count - LIST_LIMIT} more")
    raise CheckpointError("\n".join(lines))


def _layer_hint(present: Mapping[str, Any], expected: Mapping[str, Any]) -> str | None:
    """Name the layer counts when the config and the checkpoint disagree on them."""
    claimed = getattr(expected, "num_hidden_layers", None)
    if claimed is None:
        return None
    held = set()
    for name in present:
        index = name.removeprefix("model.layers.").partition(".")[0]
        if name.startswith("model.layers.") and index.isascii() and index.isdigit():
            held.add(int(index))
    if not held or max(held) + 1 == claimed:
        return None
    return (f"the checkpoint holds decoder layers {min(held)}..{max(held)} ({len(held)}), "
            f"the config's num_hidden_layers is {claimed}")


# ------------------------------------------------------------------------------- load


def load_state_dict(
    model_dir: str | os.PathLike[str],
    expected: Mapping[str, tuple[int, ...]],
    dtype: str,
    *,
    tie_word_embeddings: bool,
    progress: bool = True,
    allow_nonfinite: bool = False,
    select: Callable[[str], bool] | None = None,
    shard: Callable[[str, tuple[int, ...]], tuple[int, int, int] | None] | None = None,
) -> dict[str, np.ndarray]:
    """Load every expected tensor of an HF LLaMA checkpoint as a C-contiguous numpy array.

    For one rank of a parallel layout: ``select(name)`` keeps only the tensors the rank
    holds, and ``shard(name, shape)`` gives the (dim, start, stop) slice of a tensor the
    rank holds a part of; only that slice is read from the file (safetensors reads slices
    without the whole tensor). The whole checkpoint is still checked against ``expected``.

    ``expected`` maps HF tensor names to shapes (``LlamaConfig.expected_weight_shapes()``);
    the checkpoint must hold exactly those, except that ``lm_head.weight`` may be absent
    when ``tie_word_embeddings`` is true. ``dtype`` is "f32", "f16" or "bf16" (numpy
    float32/float16/``ml_dtypes.bfloat16``); conversion goes through float32.

    The result is keyed in ``expected`` order. With tied embeddings it always holds
    ``lm_head.weight``, normally as the very same array object as the embedding (shared
    memory); see the module docstring for a stored, differing ``lm_head.weight``.

    Raises CheckpointError (a ValueError) naming the file and tensor for any layout,
    format or content problem; all mismatches against ``expected`` come in one error.
    A NaN/Inf among the stored values, or one produced by the conversion to ``dtype``, is
    such a problem unless ``allow_nonfinite`` (then a UserWarning per tensor); see the
    module docstring for why.
    """
    if dtype not in _TARGET_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_TARGET_DTYPES)}, got {dtype!r}")
    target = _TARGET_DTYPES[dtype]
    layout = _layout(Path(model_dir))

    with ExitStack() as stack:
        handles = _open_all(layout.files, stack)
        present = _inventory(layout, handles)
        _check(layout, present, expected, tie_word_embeddings)

        to_read = [name for name in expected if name in present
                   and (select is None or select(name))]
        tied_lm_head_stored = (
            tie_word_embeddings and LM_HEAD_WEIGHT in present and LM_HEAD_WEIGHT not in expected
        )
        if tied_lm_head_stored:
            to_read.append(LM_HEAD_WEIGHT)
        # Grouped by file so each shard's pages are touched in one sweep, and
        # tensor by tensor so the peak extra memory is one tensor, not one shard.
        order = {path: i for i, path in enumerate(layout.files)}
        to_read.sort(key=lambda n: order[present[n].file])

        loaded: dict[str, np.ndarray] = {}
        for name in tqdm(to_read, desc="loading weights", unit="tensor", disable=not progress):
            info = present[name]
            part = shard(name, info.shape) if shard is not None else None
            raw = _read_tensor(handles[info.file], info.file, name, info, part)
            _check_finite(raw, info.file, name, allow_nonfinite)
            loaded[name] = _convert(raw, target, info.file, name, allow_nonfinite)
            del raw

    if tie_word_embeddings and EMBED_WEIGHT in loaded:
        head = loaded.get(LM_HEAD_WEIGHT)
        embed = loaded[EMBED_WEIGHT]
        if head is None or np.array_equal(head, embed):
            loaded[LM_HEAD_WEIGHT] = embed
        else:
            warnings.warn(
                f"{present[LM_HEAD_WEIGHT].file}: tie_word_embeddings is true but the stored "
                f"{LM_HEAD_WEIGHT} differs from {EMBED_WEIGHT}; using the stored "
                f"{LM_HEAD_WEIGHT} untied, as transformers does",
                UserWarning,
                stacklevel=2,
            )

    names = list(expected)
    if LM_HEAD_WEIGHT in loaded and LM_HEAD_WEIGHT not in expected:
        names.append(LM_HEAD_WEIGHT)
    return {name: loaded[name] for name in names if name in loaded}
