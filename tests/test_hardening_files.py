"""Issue 30, item 3: every file the loader, the tokenizer path and the suite open is checked
to be a regular file (after its links, a bounded number of them) and readable; anything
else is one line naming the path and what it is, and no read waits on a pipe.

Before: a config.json that is a pipe waited forever (the CLI, the suite until its check
timeout), /dev/zero ended in a MemoryError traceback, a pipe for model.safetensors said
"no weights found", a looping shard link raised from inside pathlib, a tokenizer.json that
is a pipe was "not found", and the suite's checks failed on an invalid tokenizer.json
without naming it. Devices are reached through symlinks (infinilm_fixtures/special_files).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from infinilm_fixtures.special_files import KINDS, make
from infinilm_fixtures.tiny import ensure
from infinilm_models import AutoLlamaModel
from infinilm_models.models.llama import CheckpointError, ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHARD = "model-00002-of-00003.safetensors"
# file -> (fixture, error class)
LOADER_FILES = {
    "config.json": ("gqa", ConfigError),
    "generation_config.json": ("gqa", ConfigError),
    "model.safetensors": ("gqa", CheckpointError),
    "model.safetensors.index.json": ("sharded", CheckpointError),
    SHARD: ("sharded", CheckpointError),
}
# In this process, /dev/null stands for the devices: reading /dev/zero, as the code before
# did, would take all the memory of a shared machine. The CLI cases read /dev/zero under
# a memory limit.
IN_PROCESS_KINDS = [k for k in KINDS if k != "dev-zero"]


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging the run) if a read waits on a pipe."""
    def expired(*_: object) -> None:
        raise TimeoutError(f"still waiting after {seconds} s (a read blocked on a pipe?)")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _copy(tmp_path: Path, fixture: str) -> Path:
    out = tmp_path / fixture
    shutil.copytree(ensure(fixture), out)
    return out


@pytest.mark.parametrize("kind", IN_PROCESS_KINDS)
@pytest.mark.parametrize("name", list(LOADER_FILES))
def test_loader_names_a_path_that_is_not_a_regular_file(tmp_path: Path, name: str,
                                                        kind: str) -> None:
    fixture, error = LOADER_FILES[name]
    model_dir = _copy(tmp_path, fixture)
    words = make(model_dir / name, kind)
    with _deadline(20), pytest.raises(error) as info:
        AutoLlamaModel.from_pretrained(model_dir, "cpu", "f32", progress=False)
    # One line names the path and what it is (a shard's line sits under its index's).
    line = next((x for x in str(info.value).splitlines() if str(model_dir / name) in x), "")
    assert words in line, str(info.value)


def test_a_chain_of_links_within_the_bound_loads(tmp_path: Path) -> None:
    model_dir = _copy(tmp_path, "gqa")
    previous = "config.real.json"
    (model_dir / "config.json").rename(model_dir / previous)
    for i in range(10):
        (model_dir / f"link{i}").symlink_to(previous)
        previous = f"link{i}"
    (model_dir / "config.json").symlink_to(previous)
    assert AutoLlamaModel.from_pretrained(model_dir, "cpu", "f32", progress=False)


def _cli(*args: str | Path, memory_limit: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))

    def limit() -> None:  # the CLI never imports torch: 3 GB of address space is plenty
        if memory_limit:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    cmd = [sys.executable, "-m", "infinilm_models", "generate", "-q", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
                          preexec_fn=limit)


# A subprocess each (~2 s): the cases the in-process tests cannot run (/dev/zero, a pipe
# the CLI itself would wait on) and the tokenizer, which only the CLI and the suite read.
@pytest.mark.parametrize(("name", "kind", "extra"), [
    ("config.json", "dev-zero", ["--token-ids", "5,6"]),
    ("config.json", "fifo", ["--token-ids", "5,6"]),
    ("tokenizer.json", "fifo", ["--prompt", "the water"]),
    ("tokenizer.json", "self-loop", ["--token-ids", "5,6"]),  # --output auto needs it
])
def test_cli_one_line_for_a_path_that_is_not_a_regular_file(tmp_path: Path, name: str,
                                                            kind: str, extra: list) -> None:
    model_dir = _copy(tmp_path, "gqa")
    words = make(model_dir / name, kind)
    try:
        out = _cli("--model", model_dir, "--max-new-tokens", "2", *extra,
                   memory_limit=3 << 30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the CLI still waits on {name} ({kind}) after 60 s")
    assert out.returncode == 2 and out.stdout == "", out
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"error: {model_dir / name}: {words}"), out.stderr


def test_cli_names_an_invalid_tokenizer_json(tmp_path: Path) -> None:
    model_dir = _copy(tmp_path, "gqa")
    (model_dir / "tokenizer.json").write_text('{"model": ')
    out = _cli("--model", model_dir, "--prompt", "the water")
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1, out
    assert out.stderr.startswith(f"error: {model_dir / 'tokenizer.json'}: not a valid "
                                 "tokenizer.json"), out.stderr


def test_suite_checks_name_the_file(tmp_path: Path) -> None:
    """An inner conformance run over three user checkpoints: an invalid tokenizer.json,
    a config.json that is a pipe, a weights file that is a dangling link. Each check of
    each is an error or a failure whose message names the file, and the run completes
    (it waited on the pipe until the check timeout, and named no tokenizer file)."""
    bad_tok = _copy(tmp_path / "a", "gqa")
    (bad_tok / "tokenizer.json").write_text("not json")
    pipe = _copy(tmp_path / "b", "gqa")
    make(pipe / "config.json", "fifo")
    dangling = _copy(tmp_path / "c", "gqa")
    make(dangling / "model.safetensors", "dangling-link")
    expect = {str(bad_tok): f"{bad_tok / 'tokenizer.json'}: not a valid tokenizer.json",
              str(pipe): f"{pipe / 'config.json'}: is a named pipe (FIFO)",
              str(dangling): f"{dangling / 'model.safetensors'}: is a dangling symlink"}
    reports = tmp_path / "reports"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p",
           "no:hypothesispytest", "-p", "no:xdist", "-q", "--infini-device", "cpu",
           f"--report-dir={reports}", "--check-timeout=30", "--dtype=f32",
           f"--model={bad_tok},{pipe},{dangling}", "conformance/model/test_model_golden.py"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    results = reports / "latest" / "results.json"
    assert results.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(results.read_text())
    assert proc.returncode == 1 and doc["verdict"] == "fail"
    by_model = {r["model"]: r for r in doc["results"]}
    assert sorted(by_model) == sorted(expect), by_model.keys()
    for model, words in expect.items():
        record = by_model[model]
        assert record["status"] in ("error", "failed"), record
        assert words in record["message"], (model, record["message"])
