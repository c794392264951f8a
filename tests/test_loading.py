"""Self-test for infinilm_models.models.llama.loading: strict HF safetensors loading.

Broken checkpoints are made by copying a tiny fixture into tmp_path and damaging the copy;
every refusal must be a CheckpointError whose message names the file/tensor concerned.
Good checkpoints must load to exactly what transformers loads, rounded to the dtype.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from functools import cache
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from infinilm_fixtures.tiny import VARIANTS, ensure
from infinilm_models.models.auto import load_config
from infinilm_models.models.llama import loading
from infinilm_models.models.llama.configuration import LlamaConfig
from infinilm_models.models.llama.loading import CheckpointError, load_state_dict, weights_files

# Everything loads from local dirs; never let a typo turn into a Hub download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DTYPES = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}
EMBED, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
SHARDED = "sharded"
SHARD_NAMES = [f"model-{i:05d}-of-00003.safetensors" for i in (1, 2, 3)]
# Damage applied to a real file; the bytes are built by _truncations/_corruptions.
TRUNCATIONS = ["empty", "inside length prefix", "inside header", "header only", "half", "last byte"]
CORRUPTIONS = [
    "header length past end",
    "huge header length",
    "garbage header",
    "bad json",
    "offsets past end",
    "offsets reversed",
    "shape vs offsets",
    "unknown dtype",
    "header not object",
]


# ---------------------------------------------------------------------------- helpers


def _load(model_dir: Path, dtype: str = "f32") -> dict[str, np.ndarray]:
    config = load_config(model_dir)  # the family's config class (its weights: biases, ...)
    return load_state_dict(
        model_dir,
        config.expected_weight_shapes(),
        dtype,
        tie_word_embeddings=config.tie_word_embeddings,
        progress=False,
    )


def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(ensure(name), dst)
    return dst


def _rewrite(path: Path, mutate: Callable[[dict[str, np.ndarray]], None]) -> None:
    tensors = load_file(str(path))
    mutate(tensors)
    # HF refuses safetensors without a known format in the metadata.
    save_file(tensors, str(path), metadata={"format": "pt"})


def _index(model_dir: Path) -> dict:
    return json.loads((model_dir / loading.INDEX_FILE).read_text(encoding="utf-8"))


def _write_index(model_dir: Path, index: dict) -> None:
    (model_dir / loading.INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")


def _error(model_dir: Path, dtype: str = "f32") -> str:
    with pytest.raises(CheckpointError) as info:
        _load(model_dir, dtype)
    return str(info.value)


@cache
def _hf_state(model_dir: str) -> dict[str, np.ndarray]:
    """What transformers loads, as float32 numpy (cached: each variant loads once)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _torch_cast(arr: np.ndarray, dtype: str) -> np.ndarray:
    """The reference rounding: torch's float32 -> dtype cast, as numpy."""
    import torch

    t = torch.from_numpy(arr)
    if dtype == "f32":
        return arr
    if dtype == "f16":
        return t.to(torch.float16).numpy()
    return t.to(torch.bfloat16).view(torch.int16).numpy().view(ml_dtypes.bfloat16)


def _bits(arr: np.ndarray) -> np.ndarray:
    return arr.view(np.dtype(f"u{arr.dtype.itemsize}"))


# --------------------------------------------------------------------------- positive


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_matches_transformers(name: str, dtype: str) -> None:
    model_dir = ensure(name)
    ours = _load(model_dir, dtype)
    ref = _hf_state(str(model_dir))
    assert set(ours) == set(ref)
    for key, want in ref.items():
        got = ours[key]
        assert got.dtype == np.dtype(DTYPES[dtype]), key
        assert got.flags.c_contiguous, key
        assert got.shape == want.shape, key
        # Bit-exact against torch's rounding of the same float32 values.
        np.testing.assert_array_equal(_bits(got), _bits(_torch_cast(want, dtype)), err_msg=key)
        # And within half an ulp of the float32 value (guards the reference too); the
        # absolute term is half the subnormal spacing, where relative error is unbounded.
        info = ml_dtypes.finfo(DTYPES[dtype])  # numpy's finfo does not know bfloat16
        rtol, atol = float(info.eps) / 2, float(info.smallest_subnormal) / 2
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=rtol, atol=atol, err_msg=key)


@pytest.mark.parametrize("name", [n for n, s in VARIANTS.items() if s.tie_word_embeddings])
def test_tied_lm_head_shares_embedding_memory(name: str) -> None:
    for dtype in DTYPES:
        state = _load(ensure(name), dtype)
        assert state[LM_HEAD] is state[EMBED]
        assert np.shares_memory(state[LM_HEAD], state[EMBED])


def test_untied_lm_head_is_separate() -> None:
    state = _load(ensure("untied"))
    assert not np.shares_memory(state[LM_HEAD], state[EMBED])


def test_result_follows_expected_order() -> None:
    model_dir = ensure("gqa")
    assert list(_load(model_dir)) == list(
        LlamaConfig.from_pretrained(model_dir).expected_weight_shapes()
    )


def test_sharded_equals_merged_single_file(tmp_path: Path) -> None:
    sharded = ensure(SHARDED)
    assert [p.name for p in weights_files(sharded)] == SHARD_NAMES
    merged = tmp_path / "merged"
    merged.mkdir()
    shutil.copy(sharded / "config.json", merged / "config.json")
    tensors: dict[str, np.ndarray] = {}
    for shard in SHARD_NAMES:
        tensors.update(load_file(str(sharded / shard)))
    save_file(tensors, str(merged / "model.safetensors"), metadata={"format": "pt"})
    assert weights_files(merged) == [merged / "model.safetensors"]
    for dtype in DTYPES:
        a, b = _load(sharded, dtype), _load(merged, dtype)
        assert list(a) == list(b)
        for key in a:
            np.testing.assert_array_equal(_bits(a[key]), _bits(b[key]), err_msg=key)


def _half_checkpoint(tmp_path: Path, stored: str, writer: str) -> tuple[Path, dict]:
    """'untied' re-saved with every tensor stored as F16 or BF16."""
    model_dir = _copy("untied", tmp_path)
    src = load_file(str(model_dir / "model.safetensors"))
    if writer == "numpy":
        half = {k: v.astype(DTYPES[stored]) for k, v in src.items()}
        save_file(half, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    else:
        import torch
        from safetensors.torch import save_file as torch_save

        tdt = torch.float16 if stored == "f16" else torch.bfloat16
        torch_save(
            {k: torch.from_numpy(v).to(tdt) for k, v in src.items()},
            str(model_dir / "model.safetensors"),
            metadata={"format": "pt"},
        )
        half = {k: _torch_cast(v, stored) for k, v in src.items()}
    return model_dir, half


@pytest.mark.parametrize("writer", ["numpy", "torch"])
@pytest.mark.parametrize("stored", ["f16", "bf16"])
def test_half_precision_storage(tmp_path: Path, stored: str, writer: str) -> None:
    model_dir, half = _half_checkpoint(tmp_path, stored, writer)
    with safe_open(str(model_dir / "model.safetensors"), framework="numpy") as f:
        assert f.get_slice(EMBED).get_dtype() == stored.upper()
    ref = _hf_state(str(model_dir))
    for dtype in DTYPES:
        state = _load(model_dir, dtype)
        assert set(state) == set(half)
        for key, stored_arr in half.items():
            got = state[key]
            assert got.dtype == np.dtype(DTYPES[dtype]) and got.flags.c_contiguous
            wide = stored_arr.astype(np.float32)
            # f16 -> bf16 (and back) is the one lossy pair; every other pair is exact.
            np.testing.assert_array_equal(
                _bits(got), _bits(_torch_cast(wide, dtype)), err_msg=f"{key} {dtype}"
            )
            if dtype == "f32":
                np.testing.assert_array_equal(got, ref[key], err_msg=key)
            if dtype == stored:
                np.testing.assert_array_equal(_bits(got), _bits(stored_arr), err_msg=key)


def test_bf16_raw_fallback_when_library_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Older safetensors cannot return BF16 to numpy; the loader reads the bytes itself.
    model_dir, half = _half_checkpoint(tmp_path, "bf16", "numpy")
    normal = _load(model_dir, "bf16")

    def refuse(handle: object, name: str) -> np.ndarray:
        raise TypeError("data type 'bfloat16' not understood")

    monkeypatch.setattr(loading, "_library_get_tensor", refuse)
    fallback = _load(model_dir, "bf16")
    for key, arr in normal.items():
        np.testing.assert_array_equal(_bits(fallback[key]), _bits(arr), err_msg=key)
        np.testing.assert_array_equal(_bits(fallback[key]), _bits(half[key]), err_msg=key)
        assert fallback[key].flags.c_contiguous and fallback[key].flags.writeable


def test_read_failure_names_file_and_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(handle: object, name: str) -> np.ndarray:
        raise OSError("disk on fire")

    monkeypatch.setattr(loading, "_library_get_tensor", refuse)
    msg = _error(ensure("mha"))
    assert "model.safetensors" in msg and EMBED in msg and "disk on fire" in msg


def test_hf_cache_snapshot_symlinks_are_followed(tmp_path: Path) -> None:
    # Hub cache layout: snapshots/<rev>/ holds symlinks into ../../blobs/.
    repo = tmp_path / "models--tiny--sharded"
    blobs, snap = repo / "blobs", repo / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in ensure(SHARDED).iterdir():
        blob = blobs / f"blob-{f.name}"
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    state = _load(snap)
    ref = _load(ensure(SHARDED))
    for key in ref:
        np.testing.assert_array_equal(state[key], ref[key])


def test_symlink_inside_model_dir_is_followed(tmp_path: Path) -> None:
    model_dir = _copy(SHARDED, tmp_path)
    (model_dir / "store").mkdir()
    shard = SHARD_NAMES[1]
    (model_dir / shard).rename(model_dir / "store" / shard)
    (model_dir / shard).symlink_to(Path("store") / shard)
    assert _load(model_dir).keys() == _load(ensure(SHARDED)).keys()


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = ensure("mha")
    config = LlamaConfig.from_pretrained(model_dir)
    args = (model_dir, config.expected_weight_shapes(), "f32")
    load_state_dict(*args, tie_word_embeddings=False, progress=True)
    assert "loading weights" in capsys.readouterr().err
    load_state_dict(*args, tie_word_embeddings=False, progress=False)
    assert capsys.readouterr().err == ""


def test_stored_lm_head_equal_to_embedding_is_tied(tmp_path: Path) -> None:
    model_dir = _copy("tied", tmp_path)
    _rewrite(model_dir / "model.safetensors", lambda t: t.update({LM_HEAD: t[EMBED].copy()}))
    state = _load(model_dir)
    assert state[LM_HEAD] is state[EMBED]


def test_stored_lm_head_differing_while_tied_is_used_like_transformers(tmp_path: Path) -> None:
    # transformers >= 5 does not tie when both are stored and differ; it keeps lm_head.
    model_dir = _copy("tied", tmp_path)

    def add_head(t: dict[str, np.ndarray]) -> None:
        t[LM_HEAD] = (t[EMBED] * 0.5).astype(np.float32)

    _rewrite(model_dir / "model.safetensors", add_head)
    with pytest.warns(UserWarning, match=r"model\.safetensors.*lm_head\.weight"):
        state = _load(model_dir)
    assert not np.shares_memory(state[LM_HEAD], state[EMBED])
    ref = _hf_state(str(model_dir))
    np.testing.assert_array_equal(state[LM_HEAD], ref[LM_HEAD])
    np.testing.assert_array_equal(state[EMBED], ref[EMBED])


# --------------------------------------------------------------------------- refusals


def test_missing_unexpected_and_misshaped_reported_together(tmp_path: Path) -> None:
    model_dir = _copy("untied", tmp_path)
    q = "model.layers.0.self_attn.q_proj.weight"
    gone = "model.layers.1.mlp.up_proj.weight"
    extra = "model.layers.7.self_attn.rotary_emb.inv_freq"

    def damage(t: dict[str, np.ndarray]) -> None:
        del t[gone]
        t[extra] = np.ones(4, np.float32)
        t[q] = np.ascontiguousarray(t[q][:-1])

    _rewrite(model_dir / "model.safetensors", damage)
    msg = _error(model_dir)
    assert str(model_dir / "model.safetensors") in msg
    assert "1 missing, 1 unexpected, 1 wrong shape" in msg
    assert gone in msg and "(96, 32)" in msg
    assert extra in msg and "(4,)" in msg
    assert q in msg and "got (31, 32), expected (32, 32)" in msg


@pytest.mark.parametrize("kind", ["missing", "unexpected", "wrong shape"])
def test_single_mismatch(tmp_path: Path, kind: str) -> None:
    model_dir = _copy("mqa", tmp_path)
    name = "model.norm.weight"

    def damage(t: dict[str, np.ndarray]) -> None:
        if kind == "missing":
            del t[name]
        elif kind == "unexpected":
            t["model.layers.2.input_layernorm.weight"] = t[name].copy()
        else:
            t[name] = np.ones(47, np.float32)

    _rewrite(model_dir / "model.safetensors", damage)
    msg = _error(model_dir)
    assert f"1 {kind}" in msg and "model.safetensors" in msg
    assert (name if kind != "unexpected" else "model.layers.2.input_layernorm.weight") in msg


def test_untied_without_lm_head(tmp_path: Path) -> None:
    model_dir = _copy("untied", tmp_path)
    _rewrite(model_dir / "model.safetensors", lambda t: t.pop(LM_HEAD))
    msg = _error(model_dir)
    assert "1 missing" in msg and LM_HEAD in msg and "model.safetensors" in msg


def test_sharded_mismatches_name_their_shard(tmp_path: Path) -> None:
    model_dir = _copy(SHARDED, tmp_path)
    index = _index(model_dir)
    name = "model.layers.2.mlp.down_proj.weight"
    shard = index["weight_map"][name]

    def damage(t: dict[str, np.ndarray]) -> None:
        t[name] = np.ascontiguousarray(t[name][:, :-3])

    _rewrite(model_dir / shard, damage)
    msg = _error(model_dir)
    assert loading.INDEX_FILE in msg and f"{name} in {shard}" in msg
    assert "got (96, 253), expected (96, 256)" in msg


def test_missing_shard(tmp_path: Path) -> None:
    model_dir = _copy(SHARDED, tmp_path)
    (model_dir / SHARD_NAMES[1]).unlink()
    msg = _error(model_dir)
    assert loading.INDEX_FILE in msg and SHARD_NAMES[1] in msg and "does not exist" in msg
    with pytest.raises(CheckpointError, match=SHARD_NAMES[1]):
        weights_files(model_dir)


def _point_entry_at(model_dir: Path, entry: str) -> str:
    """Redirect every tensor of shard 2 to ``entry``; returns one of those tensors."""
    index = _index(model_dir)
    moved = [k for k, v in index["weight_map"].items() if v == SHARD_NAMES[1]]
    for k in moved:
        index["weight_map"][k] = entry
    _write_index(model_dir, index)
    return moved[0]


def test_index_entry_with_dotdot_is_refused(tmp_path: Path) -> None:
    model_dir = _copy(SHARDED, tmp_path)
    # A real shard sits at the target, so only the containment check can refuse it.
    shutil.copy(model_dir / SHARD_NAMES[1], tmp_path / "outside.safetensors")
    tensor = _point_entry_at(model_dir, "../outside.safetensors")
    msg = _error(model_dir)
    assert "'../outside.safetensors'" in msg and tensor in msg and "outside" in msg
    assert loading.INDEX_FILE in msg


def test_index_entry_with_absolute_path_is_refused(tmp_path: Path) -> None:
    model_dir = _copy(SHARDED, tmp_path)
    outside = tmp_path / "elsewhere" / SHARD_NAMES[1]
    outside.parent.mkdir()
    shutil.copy(model_dir / SHARD_NAMES[1], outside)
    tensor = _point_entry_at(model_dir, str(outside))
    msg = _error(model_dir)
    assert repr(str(outside)) in msg and tensor in msg and "absolute" in msg


def test_symlinked_shard_pointing_outside_is_refused(tmp_path: Path) -> None:
    model_dir = _copy(SHARDED, tmp_path)
    outside = tmp_path / "elsewhere" / SHARD_NAMES[1]
    outside.parent.mkdir()
    (model_dir / SHARD_NAMES[1]).rename(outside)
    (model_dir / SHARD_NAMES[1]).symlink_to(outside)
    msg = _error(model_dir)
    assert repr(SHARD_NAMES[1]) in msg and "symlink" in msg and str(outside) in msg


def _truncations(raw: bytes) -> dict[str, bytes]:
    header_len = struct.unpack("<Q", raw[:8])[0]
    return {
        "empty": b"",
        "inside length prefix": raw[:5],
        "inside header": raw[: 8 + header_len // 2],
        "header only": raw[: 8 + header_len],
        "half": raw[: len(raw) // 2],
        "last byte": raw[:-1],
    }


@pytest.mark.parametrize("cut", TRUNCATIONS)
def test_truncated_file(tmp_path: Path, cut: str) -> None:
    model_dir = _copy("mha", tmp_path)
    path = model_dir / "model.safetensors"
    variants = _truncations(path.read_bytes())
    assert list(variants) == TRUNCATIONS
    path.write_bytes(variants[cut])
    msg = _error(model_dir)
    assert str(path) in msg and "not a valid safetensors file" in msg


def test_truncated_shard(tmp_path: Path) -> None:
    model_dir = _copy(SHARDED, tmp_path)
    path = model_dir / SHARD_NAMES[2]
    path.write_bytes(path.read_bytes()[:-100])
    msg = _error(model_dir)
    assert str(path) in msg


def _corruptions(raw: bytes) -> dict[str, bytes]:
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = raw[8 : 8 + header_len]
    body = raw[8 + header_len :]
    meta = json.loads(header)
    end = max(v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__")

    def rejson(mutate: Callable[[dict], None]) -> bytes:
        m = json.loads(header)
        mutate(m)
        h = json.dumps(m).encode()
        return struct.pack("<Q", len(h)) + h + body

    def first(m: dict) -> dict:
        return m[next(k for k in m if k != "__metadata__")]

    return {
        "header length past end": struct.pack("<Q", len(raw) * 4) + raw[8:],
        "huge header length": struct.pack("<Q", 2**62) + raw[8:],
        "garbage header": raw[:8] + b"\xff" * header_len + body,
        "bad json": raw[:8] + header.replace(b'"', b"'", 4) + body,
        "offsets past end": rejson(lambda m: first(m).update(data_offsets=[end, end + 4096])),
        "offsets reversed": rejson(lambda m: first(m).update(data_offsets=[64, 0])),
        "shape vs offsets": rejson(lambda m: first(m).update(shape=[3, 3])),
        "unknown dtype": rejson(lambda m: first(m).update(dtype="Q7")),
        "header not object": struct.pack("<Q", 2) + b"[]" + body,
    }


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_header(tmp_path: Path, kind: str) -> None:
    model_dir = _copy("mha", tmp_path)
    path = model_dir / "model.safetensors"
    variants = _corruptions(path.read_bytes())
    assert list(variants) == CORRUPTIONS
    path.write_bytes(variants[kind])
    msg = _error(model_dir)
    assert str(path) in msg


def test_unsupported_storage_dtype(tmp_path: Path) -> None:
    model_dir = _copy("mha", tmp_path)
    name = "model.layers.0.input_layernorm.weight"
    _rewrite(model_dir / "model.safetensors", lambda t: t.update({name: t[name].astype(np.int32)}))
    msg = _error(model_dir)
    assert name in msg and "I32" in msg and "model.safetensors" in msg


def test_f16_overflow_is_refused(tmp_path: Path) -> None:
    model_dir = _copy("mha", tmp_path)
    name = "model.layers.1.mlp.gate_proj.weight"

    def blow_up(t: dict[str, np.ndarray]) -> None:
        t[name] = t[name].copy()
        t[name][3, 5] = 1e6

    _rewrite(model_dir / "model.safetensors", blow_up)
    msg = _error(model_dir, "f16")
    assert name in msg and "model.safetensors" in msg and "float16" in msg
    # bf16 and f32 have the range for it.
    assert _load(model_dir, "bf16")[name][3, 5] == ml_dtypes.bfloat16(1e6)
    assert _load(model_dir, "f32")[name][3, 5] == np.float32(1e6)


def test_invalid_index_json(tmp_path: Path) -> None:
    model_dir = _copy(SHARDED, tmp_path)
    (model_dir / loading.INDEX_FILE).write_text('{"weight_map": {', encoding="utf-8")
    msg = _error(model_dir)
    assert str(model_dir / loading.INDEX_FILE) in msg and "invalid JSON" in msg


@pytest.mark.parametrize("content", [{}, {"weight_map": []}, {"weight_map": {"a": 3}}, []])
def test_index_without_usable_weight_map(tmp_path: Path, content: object) -> None:
    model_dir = _copy(SHARDED, tmp_path)
    (model_dir / loading.INDEX_FILE).write_text(json.dumps(content), encoding="utf-8")
    msg = _error(model_dir)
    assert loading.INDEX_FILE in msg and "weight_map" in msg


def test_index_and_shards_disagree(tmp_path: Path) -> None:
    model_dir = _copy(SHARDED, tmp_path)
    index = _index(model_dir)
    # Claim a tensor lives in a shard that does not hold it, and drop another from the map.
    moved = next(k for k, v in index["weight_map"].items() if v == SHARD_NAMES[0])
    dropped = next(k for k, v in index["weight_map"].items() if v == SHARD_NAMES[2])
    index["weight_map"][moved] = SHARD_NAMES[1]
    del index["weight_map"][dropped]
    _write_index(model_dir, index)
    msg = _error(model_dir)
    assert loading.INDEX_FILE in msg
    assert moved in msg and SHARD_NAMES[1] in msg
    assert dropped in msg and SHARD_NAMES[2] in msg


def test_no_weights_at_all(tmp_path: Path) -> None:
    model_dir = _copy("mha", tmp_path)
    (model_dir / "model.safetensors").unlink()
    msg = _error(model_dir)
    assert str(model_dir) in msg
    assert "model.safetensors" in msg and loading.INDEX_FILE in msg
    (model_dir / "pytorch_model.bin").write_bytes(b"\0")
    assert "pytorch_model.bin" in _error(model_dir)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nowhere"):
        load_state_dict(tmp_path / "nowhere", {}, "f32", tie_word_embeddings=False)


def test_bad_dtype_argument_is_not_a_checkpoint_error() -> None:
    with pytest.raises(ValueError, match="dtype") as info:
        _load(ensure("mha"), "f64")
    assert not isinstance(info.value, CheckpointError)


# ------------------------------------------------------------------ non-finite weights


@pytest.mark.parametrize("stored", ["f32", "bf16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_weight_is_refused(tmp_path: Path, bad: float, stored: str) -> None:
    model_dir = _copy("mha", tmp_path)
    name = "model.layers.1.self_attn.v_proj.weight"

    def poison(t: dict[str, np.ndarray]) -> None:
        for key in t:
            t[key] = t[key].astype(DTYPES[stored])
        t[name][7, 3] = bad

    _rewrite(model_dir / "model.safetensors", poison)
    for dtype in DTYPES:
        msg = _error(model_dir, dtype)
        assert str(model_dir / "model.safetensors") in msg and repr(name) in msg
        assert "1 non-finite value(s) out of 4096" in msg and "at index [7, 3]" in msg
        assert str(float(bad)) in msg and "allow_nonfinite=True" in msg


def test_allow_nonfinite_loads_with_a_warning(tmp_path: Path) -> None:
    model_dir = _copy("mha", tmp_path)
    name = "model.norm.weight"
    _rewrite(model_dir / "model.safetensors", lambda t: t[name].__setitem__(slice(0, 3), np.nan))
    config = LlamaConfig.from_pretrained(model_dir)
    with pytest.warns(UserWarning, match=r"'model\.norm\.weight' holds 3 non-finite"):
        state = load_state_dict(model_dir, config.expected_weight_shapes(), "f32",
                                tie_word_embeddings=False, progress=False,
                                allow_nonfinite=True)
    assert np.isnan(state[name][:3]).all() and np.isfinite(state[name][3:]).all()


# ------------------------------------------------------------- the weights-file rule


def _move_outside(model_dir: Path, name: str, tmp_path: Path) -> Path:
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir(exist_ok=True)
    (model_dir / name).rename(outside)
    (model_dir / name).symlink_to(outside)
    return outside


def test_single_file_symlink_pointing_outside_is_refused(tmp_path: Path) -> None:
    # The same rule as for shards (test_symlinked_shard_pointing_outside_is_refused).
    model_dir = _copy("mha", tmp_path)
    outside = _move_outside(model_dir, loading.SINGLE_FILE, tmp_path)
    msg = _error(model_dir)
    assert str(model_dir / loading.SINGLE_FILE) in msg and "symlink" in msg
    assert str(outside) in msg and "outside the model directory" in msg


def test_index_symlink_pointing_outside_is_refused(tmp_path: Path) -> None:
    model_dir = _copy(SHARDED, tmp_path)
    outside = _move_outside(model_dir, loading.INDEX_FILE, tmp_path)
    msg = _error(model_dir)
    assert loading.INDEX_FILE in msg and str(outside) in msg and "symlink" in msg


def test_single_file_symlinks_inside_and_into_hub_blobs_are_followed(tmp_path: Path) -> None:
    model_dir = _copy("mha", tmp_path)
    (model_dir / "store").mkdir()
    (model_dir / loading.SINGLE_FILE).rename(model_dir / "store" / "w.safetensors")
    (model_dir / loading.SINGLE_FILE).symlink_to(Path("store") / "w.safetensors")
    ref = _load(ensure("mha"))
    assert _load(model_dir).keys() == ref.keys()
    repo = tmp_path / "models--tiny--mha"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in ensure("mha").iterdir():
        shutil.copy(f, blobs / f"blob-{f.name}")
        (snap / f.name).symlink_to(os.path.relpath(blobs / f"blob-{f.name}", snap))
    state = _load(snap)
    for key in ref:
        np.testing.assert_array_equal(state[key], ref[key])


# ------------------------------------------------------------------- report size


def test_config_claiming_a_million_layers_gives_a_short_error(tmp_path: Path) -> None:
    """(How long the refusal takes is a benchmark: conformance/perf/test_perf_harness.py.)"""
    model_dir = _copy("mha", tmp_path)
    config = json.loads((model_dir / "config.json").read_text())
    config["num_hidden_layers"] = 10**6
    (model_dir / "config.json").write_text(json.dumps(config))
    msg = _error(model_dir)
    # 9 tensors per layer + embedding, norm, lm_head; the file holds 2 layers' worth.
    missing = 9 * 10**6 + 3 - (9 * 2 + 3)
    assert f"({missing} missing)" in msg
    assert "decoder layers 0..1 (2), the config's num_hidden_layers is 1000000" in msg
    assert "model.layers.2.input_layernorm.weight (64,)" in msg
    assert f"... and {missing - loading.LIST_LIMIT} more" in msg
    assert len(msg) < 4000, len(msg)  # was 505 MB: every name was built and listed


def test_long_mismatch_lists_are_capped(tmp_path: Path) -> None:
    model_dir = _copy(SHARDED, tmp_path)
    config = json.loads((model_dir / "config.json").read_text())
    config["hidden_size"] = 80  # every tensor but the norms' layout changes shape
    config["head_dim"] = 16
    (model_dir / "config.json").write_text(json.dumps(config))
    msg = _error(model_dir)
    assert "wrong shape" in msg and "... and " in msg
    assert msg.count("expected (") <= loading.LIST_LIMIT
