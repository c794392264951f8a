"""Helpers of the CLI tests (test_cli.py, test_hardening.py): a copy of a tiny fixture to
damage, edits of its JSON and its weights, and `python -m infinilm_models generate` in a
child process. A plain module: tests import it, never another test file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from infinilm_fixtures.tiny import ensure

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [5, 17, 42, 99, 7]


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [sys.executable, "-m", "infinilm_models", "generate", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def copy_fixture(tmp_path: Path, name: str = "gqa", tokenizer: bool = True) -> Path:
    out = tmp_path / name
    shutil.copytree(ensure(name), out)
    if not tokenizer:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (out / f).unlink(missing_ok=True)
    return out


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def retensor(model_dir: Path, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    path = model_dir / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})
