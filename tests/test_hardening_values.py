"""Issue 30, item 1: weights are checked in the dtype the run uses, and `generate` never
emits a token from non-finite logits.

A float64 checkpoint holding 1e300 loaded in f32, bf16 or f16 (every logit NaN, and the
CLI printed token ids with exit status 0), a float32 70000 loaded in f16: refused like a
stored NaN, naming the file, the tensor, the index, the stored value and the run's dtype.
With allow_nonfinite the load proceeds and says so, and generation then stops at the first
non-finite logits with one line, printing nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from infinilm_fixtures.tiny import ensure
from infinilm_models import AutoLlamaModel, generate
from infinilm_models.models.llama import CheckpointError
from infinilm_models.runtime import Device, memory

ROOT = Path(__file__).resolve().parents[1]
NAME = "model.layers.1.mlp.gate_proj.weight"
PROMPT = [5, 17, 42, 99, 7]
# the run's dtype -> how the message names it
DTYPE_NAMES = {"f32": "float32 (f32)", "f16": "float16 (f16)", "bf16": "bfloat16 (bf16)"}


def _checkpoint(tmp_path: Path, stored: type, value: float) -> Path:
    """tiny-gqa with every tensor stored as `stored` and NAME[3, 5] = value."""
    model_dir = tmp_path / "gqa"
    shutil.copytree(ensure("gqa"), model_dir)
    (model_dir / "tokenizer.json").unlink()
    path = model_dir / "model.safetensors"
    tensors = {k: v.astype(stored) for k, v in load_file(str(path)).items()}
    tensors[NAME][3, 5] = value
    save_file(tensors, str(path), metadata={"format": "pt"})
    return model_dir


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [sys.executable, "-m", "infinilm_models", "generate", "-q", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_float64_value_beyond_the_run_dtype_is_refused(tmp_path: Path, dtype: str) -> None:
    model_dir = _checkpoint(tmp_path, np.float64, 1e300)
    cpu = Device("cpu")
    before = memory.allocated_bytes(cpu)
    with pytest.raises(CheckpointError) as info:
        AutoLlamaModel.from_pretrained(model_dir, "cpu", dtype, progress=False)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for part in (str(model_dir / "model.safetensors"), repr(NAME), "1e+300", "index [3, 5]",
                 "finite as stored (float64)", DTYPE_NAMES[dtype], "allow_nonfinite=True",
                 "no supported dtype"):
        assert part in msg, (part, msg)
    assert memory.allocated_bytes(cpu) == before  # nothing was put on the device


def test_float32_value_beyond_float16_names_index_value_and_what_holds_it(
        tmp_path: Path) -> None:
    model_dir = _checkpoint(tmp_path, np.float32, 70000.0)
    with pytest.raises(CheckpointError) as info:
        AutoLlamaModel.from_pretrained(model_dir, "cpu", "f16", progress=False)
    msg = str(info.value)
    for part in (repr(NAME), "1 value(s) out of 10240", "70000.0 at index [3, 5] becomes inf",
                 "float16 (f16)", "65504", "load it as f32 or bf16"):
        assert part in msg, (part, msg)
    # f32 and bf16 hold it: those runs load, with the value.
    model = AutoLlamaModel.from_pretrained(model_dir, "cpu", "bf16", progress=False)
    assert model.config.vocab_size == 320


def test_allow_nonfinite_loads_and_generate_refuses_the_nan_logits(tmp_path: Path) -> None:
    from infinilm_models.generation import NonFiniteLogitsError

    model_dir = _checkpoint(tmp_path, np.float64, 1e300)
    with pytest.warns(UserWarning, match=r"1e\+300 at index \[3, 5\] becomes inf.*loaded "
                                         r"anyway \(allow_nonfinite=True\)"):
        model = AutoLlamaModel.from_pretrained(model_dir, "cpu", "f32", progress=False,
                                               allow_nonfinite=True)
    assert not np.isfinite(model.forward([PROMPT]).numpy()).any()  # why it is refused
    with pytest.raises(NonFiniteLogitsError) as info:
        generate(model, [PROMPT, PROMPT], max_new_tokens=4, return_logits=True)
    msg = str(info.value)
    assert "\n" not in msg and "step 0" in msg and "row 0" in msg, msg
    assert "320 non-finite value(s) out of 320" in msg and "nan" in msg, msg


def test_cli_refuses_the_value_in_one_line_and_with_its_flag_prints_no_token(
        tmp_path: Path) -> None:
    model_dir = _checkpoint(tmp_path, np.float64, 1e300)
    args = ("--model", model_dir, "--token-ids", "5,17,42", "--max-new-tokens", "3")
    refused = _cli(*args)
    assert refused.returncode == 2 and refused.stdout == "", refused
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: ")
    for part in (repr(NAME), "1e+300", "float32 (f32)", "--allow-nonfinite"):
        assert part in refused.stderr, (part, refused.stderr)

    flagged = _cli(*args, "--allow-nonfinite")
    assert flagged.returncode == 2 and flagged.stdout == "", flagged  # no token printed
    lines = flagged.stderr.splitlines()
    assert lines[0].startswith("warning: ") and "loaded anyway" in lines[0], lines
    assert lines[-1].startswith("error: generate: ") and "non-finite" in lines[-1], lines
    assert all(line.startswith(("warning: ", "error: ")) for line in lines), lines
    assert sum(line.startswith("error: ") for line in lines) == 1, lines
