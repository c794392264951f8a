"""`python -m infinilm_models generate` as a user runs it (a subprocess): every user error is
one line `error: ...` on stderr with exit status 2, never a traceback; a directory without
a tokenizer generates from --token-ids and prints ids; config.json is read first."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import (  # tests/ on sys.path
    PROMPT,
    copy_fixture,
    edit_json,
    retensor,
    run_cli,
)

from infinilm_fixtures.tiny import ensure
from infinilm_models import AutoLlamaModel, generate


def _api_tokens(model_dir: Path, n: int, **kwargs) -> list[int]:
    model = AutoLlamaModel.from_pretrained(model_dir, "cpu", "f32", progress=False)
    return generate(model, [PROMPT], max_new_tokens=n, **kwargs).tokens[0].tolist()


def test_token_ids_without_tokenizer_print_the_generated_ids(tmp_path: Path) -> None:
    model_dir = copy_fixture(tmp_path, tokenizer=False)
    out = run_cli("--model", model_dir, "--token-ids", ",".join(map(str, PROMPT)),
                  "--max-new-tokens", "6", "--ignore-eos", "-q")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    want = _api_tokens(model_dir, 6, eos_token_ids=())
    assert out.stdout == ",".join(map(str, want)) + "\n"


def test_generation_config_json_applies(tmp_path: Path) -> None:
    model_dir = copy_fixture(tmp_path, tokenizer=False)
    free = _api_tokens(model_dir, 8, eos_token_ids=())
    at = next(i for i in range(1, len(free)) if free[i] not in free[:i])
    (model_dir / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [300, free[at]], "do_sample": True, "temperature": 0.6}))
    # --greedy beats the file's do_sample; its eos list stops the run as in the API.
    out = run_cli("--model", model_dir, "--token-ids", " ".join(map(str, PROMPT)),
                  "--max-new-tokens", "8", "--greedy", "--top-p", "0", "-q")
    assert out.returncode == 0, out.stderr
    assert out.stdout == ",".join(map(str, free[:at + 1])) + "\n"


def test_prompt_with_tokenizer_prints_text(tmp_path: Path) -> None:
    out = run_cli("--model", ensure("gqa"), "--prompt", "the water", "--max-new-tokens", "3",
                  "--ignore-eos")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("the water")
    assert "3 new tokens" in out.stderr  # the statistics line


def _unsupported_rope(d: Path) -> None:
    edit_json(d / "config.json", lambda c: c.update(
        rope_scaling={"rope_type": "proportional", "factor": 2.0}))


def _truncate(d: Path) -> None:
    path = d / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _nan(d: Path) -> None:
    retensor(d, lambda t: t["model.norm.weight"].__setitem__(3, np.nan))


# (id, how the directory is damaged, extra CLI arguments, what the one line must say)
CASES: list[tuple[str, Callable[[Path], None] | None, list[str], list[str]]] = [
    ("unsupported-rope", _unsupported_rope, [],
     ["config.json: rope_scaling.rope_type ('proportional') is not supported"]),
    ("truncated-weights", _truncate, [], ["model.safetensors: not a valid safetensors file"]),
    ("missing-tensor", lambda d: retensor(d, lambda t: t.pop("model.norm.weight")), [],
     ["checkpoint does not match the model (1 missing)", "model.norm.weight (64,)"]),
    ("nan-weight", _nan, [], ["'model.norm.weight' holds 1 non-finite", "allow_nonfinite"]),
    ("config-is-a-list", lambda d: (d / "config.json").write_text("[]"), [],
     ["config must be a JSON object, got list"]),
    ("bad-generation-config", lambda d: (d / "generation_config.json").write_text(
        '{"top_k": "many"}'), [], ["generation_config.json: top_k must be an integer"]),
    ("token-out-of-vocab", None, ["--token-ids", "1,320"],
     ["token id 320 is out of range for this model's vocabulary [0, 320)"]),
    ("cache-len-zero", None, ["--max-cache-len", "0"], ["max_cache_len must be >= 1, got 0"]),
    ("prompt-beyond-cache", None, ["--max-cache-len", "4"],
     ["prompt (5 tokens) + max_new_tokens (20) exceeds the cache length (4)"]),
    ("temperature-nan", None, ["--temperature", "nan"],
     ["temperature must be a finite number, got nan"]),
    ("top-p-zero-sampling", None, ["--sample", "--top-p", "0"], ["top_p must be in (0, 1]"]),
    ("dtype-f64", None, ["--dtype", "f64"], ["dtype f64 not supported"]),
    ("unknown-device", None, ["--device", "tpu"], ["unknown device type 'tpu'"]),
    ("tp-zero", None, ["--tp", "0"], ["tp must be >= 1, got 0"]),
    # A layout the model cannot be split into is refused before the (here broken) weights.
    ("tp-not-dividing-heads", _truncate, ["--tp", "3"],
     ["config.json: tp=3 does not divide num_attention_heads (8)"]),
    ("pp-beyond-layers", _truncate, ["--pp", "4"],
     ["pp=4 stages for 3 layers: every stage needs a layer"]),
]


@pytest.mark.parametrize(("damage", "extra", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_user_errors_are_one_line_with_status_2(tmp_path: Path, damage, extra: list[str],
                                                expected: list[str]) -> None:
    model_dir = copy_fixture(tmp_path, tokenizer=False)
    if damage is not None:
        damage(model_dir)
    if "--token-ids" not in extra:
        extra = [*extra, "--token-ids", ",".join(map(str, PROMPT))]
    out = run_cli("--model", model_dir, "-q", *extra)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
    for part in expected:
        assert part in out.stderr, out.stderr


def test_config_is_read_before_the_tokenizer(tmp_path: Path) -> None:
    out = run_cli("--model", tmp_path / "nonexistent", "--prompt", "hi")
    assert out.returncode == 2
    assert out.stderr == (f"error: {tmp_path / 'nonexistent' / 'config.json'}: not found "
                          f"(is {tmp_path / 'nonexistent'} a model directory?)\n")
    model_dir = copy_fixture(tmp_path, tokenizer=False)
    _unsupported_rope(model_dir)
    out = run_cli("--model", model_dir, "--prompt", "hi")
    assert out.returncode == 2 and "rope_type ('proportional')" in out.stderr


def test_prompt_without_tokenizer_says_what_to_do(tmp_path: Path) -> None:
    model_dir = copy_fixture(tmp_path, tokenizer=False)
    out = run_cli("--model", model_dir, "--prompt", "hi")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert f"{model_dir / 'tokenizer.json'} not found" in out.stderr
    assert "--token-ids" in out.stderr


@pytest.mark.parametrize("bad", ["1,x", "", "1,-2", "1.5"])
def test_bad_token_ids_are_usage_errors(tmp_path: Path, bad: str) -> None:
    out = run_cli("--model", ensure("gqa"), "--token-ids", bad)
    assert out.returncode == 2 and "argument --token-ids" in out.stderr
    assert "Traceback" not in out.stderr


def test_tensor_and_pipeline_parallel_generate_the_unsharded_tokens(tmp_path: Path) -> None:
    """--tp/--pp on the CPU (ranks share it through the loopback communicator): the same
    greedy tokens as the unsharded API (token ids: exact)."""
    model_dir = copy_fixture(tmp_path, tokenizer=False)
    want = ",".join(map(str, _api_tokens(model_dir, 4, eos_token_ids=())))
    for layout in (["--tp", "2"], ["--pp", "2"], ["--tp", "2", "--pp", "2"]):
        out = run_cli("--model", model_dir, "-q", "--token-ids", ",".join(map(str, PROMPT)),
                      "--max-new-tokens", "4", "--ignore-eos", "--dtype", "f32", *layout)
        assert out.returncode == 0, (layout, out.stderr)
        assert out.stdout.strip() == want, layout
