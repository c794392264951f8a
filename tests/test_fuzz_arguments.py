"""Property-based tests of the public arguments (Hypothesis): token ids, position ids,
generation parameters, devices, dtypes and cache lengths; and the suite's options and
policy files (--tolerances, --known-defects). Each case ends in a result of the
right shape (finite logits, ids in the vocabulary) or in a TypeError/ValueError whose
message names the argument; no other exception, no hang.

Derandomized with a fixed number of examples, so CI runs the same cases every time.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from infinilm_fixtures.tiny import ensure
from infinilm_models import AutoLlamaModel, generate
from infinilm_models.models.llama import LlamaForCausalLM
from infinilm_models.runtime import Device, DType

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

VOCAB = 320  # the gqa fixture's
MAX_POSITIONS = 256

ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=3),
    st.lists(st.integers(-3, 3), max_size=2))
TOKEN = st.one_of(st.integers(0, VOCAB - 1), st.integers(-3, VOCAB + 3), ANY_VALUE)
ROW = st.lists(TOKEN, max_size=5)
INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]


def _id_arrays(high: int) -> st.SearchStrategy[np.ndarray]:
    return st.one_of(
        hnp.arrays(st.sampled_from(INT_DTYPES),
                   hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
                   elements=st.integers(0, min(high, 127))),
        hnp.arrays(st.sampled_from(["float32", "float64", "bool", "complex64"]),
                   hnp.array_shapes(min_dims=1, max_dims=3, max_side=3)))


def _ids(high: int) -> st.SearchStrategy[Any]:
    valid = st.integers(1, 3).flatmap(lambda b: st.integers(1, 5).flatmap(
        lambda s: st.lists(st.lists(st.integers(0, high - 1), min_size=s, max_size=s),
                           min_size=b, max_size=b)))
    return st.one_of(valid, st.lists(ROW, max_size=3), ROW, _id_arrays(high), ANY_VALUE,
                     st.tuples(st.tuples(TOKEN, TOKEN)))


@pytest.fixture(scope="module")
def gqa() -> LlamaForCausalLM:
    return AutoLlamaModel.from_pretrained(ensure("gqa"), "cpu", "f32", progress=False)


def _named(exc: Exception, *names: str) -> bool:
    event(f"refused: {type(exc).__name__}")  # --hypothesis-show-statistics: the mix
    return any(n in str(exc) for n in names)


@FUZZ
@given(_ids(VOCAB))
def test_fuzzed_input_ids(gqa: LlamaForCausalLM, ids: Any) -> None:
    try:
        logits = gqa.forward(ids)
    except (TypeError, ValueError) as e:
        assert _named(e, "input_ids", "token id", "all prompts"), repr(e)
        return
    event("result")
    batch = len(ids)
    assert logits.shape == (batch, 1, VOCAB)
    assert np.isfinite(logits.numpy()).all()


@FUZZ
@given(_ids(MAX_POSITIONS + 2))
def test_fuzzed_position_ids(gqa: LlamaForCausalLM, pos: Any) -> None:
    ids = None
    try:
        shape = np.shape(pos) if not isinstance(pos, (list, tuple)) else (
            len(pos), len(pos[0]) if pos and isinstance(pos[0], (list, tuple, np.ndarray))
            else 0)
        ids = np.ones(shape if len(shape) == 2 and all(shape) else (1, 3), dtype=np.int64)
    except TypeError:
        ids = np.ones((1, 3), dtype=np.int64)
    try:
        logits = gqa.forward(ids, pos)
    except (TypeError, ValueError) as e:
        assert _named(e, "position"), repr(e)
        return
    event("result")
    assert logits.shape == (ids.shape[0], 1, VOCAB)
    assert np.isfinite(logits.numpy()).all()


def _mostly(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Three draws in four from the plausible values, else anything: enough runs get
    through to generation for the sampling paths to be exercised too."""
    return st.sampled_from([plausible, plausible, plausible, ANY_VALUE]).flatmap(lambda s: s)


GENERATION_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "max_new_tokens": _mostly(st.one_of(st.integers(-2, 10), st.sampled_from([300, 2**40]))),
    "do_sample": _mostly(st.booleans()),
    "temperature": _mostly(st.sampled_from([0.0, 1e-50, 0.7, 1.0, 2.0, 1e39, math.nan, -1.0,
                                            math.inf])),
    "top_k": _mostly(st.one_of(st.integers(-2, 400), st.sampled_from([2**31, 2**40]))),
    "top_p": _mostly(st.sampled_from([0.0, 1e-9, 0.5, 1.0, 1.5, -0.1, math.nan])),
    "seed": _mostly(st.integers(-2, 2**70)),
    "eos_token_ids": _mostly(st.one_of(st.lists(st.integers(-1, VOCAB + 5), max_size=3),
                                       st.integers(0, VOCAB))),
    "pad_token_id": _mostly(st.integers(-1, VOCAB)),
    "bos_token_id": _mostly(st.integers(-1, VOCAB)),
    "return_logits": _mostly(st.booleans()),
    "max_new_token": st.integers(1, 3),  # a typo
}


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(GENERATION_VALUES)), st.none(), max_size=5)
       .flatmap(lambda keys: st.fixed_dictionaries(
           {k: GENERATION_VALUES[k] for k in keys})),
       st.integers(1, 2))
def test_fuzzed_generation_arguments(gqa: LlamaForCausalLM, kwargs: dict[str, Any],
                                     batch: int) -> None:
    kwargs.setdefault("max_new_tokens", 3)
    prompt = [[5, 17, 42, 99, 7]] * batch
    try:
        out = generate(gqa, prompt, **kwargs)
    except (TypeError, ValueError) as e:
        assert _named(e, *kwargs), (kwargs, repr(e))
        return
    event("result")
    tokens = out.tokens
    assert tokens.shape[0] == batch and 1 <= tokens.shape[1] <= kwargs["max_new_tokens"]
    pad = kwargs.get("pad_token_id")
    allowed = (tokens >= 0) & (tokens < VOCAB) | (tokens == (pad if pad is not None else -1))
    assert allowed.all(), tokens
    if kwargs.get("return_logits"):
        assert len(out.logits) == tokens.shape[1]
        assert all(np.isfinite(x).all() for x in out.logits)


LOAD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "device": st.sampled_from(["cpu", "cpu:0", "CPU", " cpu ", "cuda:0", "cpu:1", "cpu:-1",
                               "cpu:x", "nvidia", "foo", "", None, 0, 1.5, Device("cpu")]),
    "dtype": st.sampled_from(["f32", "f16", "bf16", "float32", "bfloat16", "f64", "int8",
                              "x", "", None, 3, DType.F32, DType.I32]),
    "max_cache_len": st.sampled_from([None, 1, 5, 256, 10**12, 0, -1, 2.5, True, "8"]),
    "allow_nonfinite": st.sampled_from([False, True, 0, "no"]),
    "progress": st.sampled_from([False, 0, None]),
}


@settings(FUZZ, max_examples=60)
@given(st.fixed_dictionaries({}, optional=LOAD_VALUES))
def test_fuzzed_load_arguments(kwargs: dict[str, Any]) -> None:
    kwargs.setdefault("progress", False)
    device = kwargs.pop("device", "cpu")
    dtype = kwargs.pop("dtype", "f32")
    try:
        model = AutoLlamaModel.from_pretrained(ensure("gqa"), device, dtype, **kwargs)
    except (TypeError, ValueError) as e:
        names = [*kwargs, "device" if device != "cpu" else "-",
                 "dtype" if dtype != "f32" else "-"]
        assert _named(e, *names), (device, dtype, kwargs, repr(e))
        return
    event("result")
    assert model.device.type == "cpu"
    assert 1 <= model.max_cache_len <= MAX_POSITIONS
    logits = model.forward([[1]])
    assert logits.shape == (1, 1, VOCAB)
    assert np.isfinite(logits.numpy().astype(np.float32)).all()


# -- the suite's options and policy files (issue 30.2) ---------------------------------------
# Every value either converts to one in range or is refused with one line naming the option
# (a policy file: the file), never another exception.

SUITE_DEFAULTS = {"--infini-device": "cpu", "--dtype": "f32,f16,bf16", "--model": None,
                  "--isolate": "auto", "--bench-scale": "auto", "--check-timeout": "900",
                  "--sweep-seed": "20261130", "--sweep-cases": "0", "--report-dir": None,
                  "--known-defects": [], "--tolerances": None}
OPTION_TEXT = st.one_of(
    st.text(max_size=6), st.integers(-(2**70), 2**70).map(str), st.floats().map(str),
    st.sampled_from(["", " ", "0", "-0", "1e400", "nan", "inf", "-1", "auto", "yes", "smoke",
                     "cpu", "f32", "bf16,f16", "tiny-gqa", "tiny-gqa,", ",", "1_000", "0x10"]))


@FUZZ
@given(option=st.sampled_from(sorted(set(SUITE_DEFAULTS) - {"--known-defects"})),
       value=OPTION_TEXT)
def test_fuzzed_suite_options(option: str, value: str) -> None:
    from conformance.plugin.options import BENCH_SCALES, ISOLATE, checked

    try:
        got = checked({**SUITE_DEFAULTS, option: value}, {})
    except pytest.UsageError as e:
        message = str(e)
        event("refused")
        assert message.startswith(option) and "\n" not in message, message
        return
    event("accepted")
    assert 0 < got["--check-timeout"] < math.inf
    assert got["--sweep-seed"] >= 0 and got["--sweep-cases"] >= 0
    assert got["--isolate"] in ISOLATE and got["--bench-scale"] in BENCH_SCALES
    assert got["--infini-device"].strip()


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("policy")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) \
            else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v)  # a TOML basic string: JSON's escapes are TOML's


def _key(k: str) -> str:
    return json.dumps(k)


def _tolerance_text(table: dict) -> str:
    """TOML for {check: {dtype: entry}} (scalars first, as TOML wants them)."""
    lines = [f"{_key(k)} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for check, per in table.items():
        if isinstance(per, dict):
            lines.append(f"[{_key(check)}]")
            lines += [f"{_key(d)} = {_toml_value(e)}" for d, e in per.items()]
    return "\n".join(lines) + "\n"


SCALAR = st.one_of(st.floats(), st.integers(-3, 10**6), st.booleans(), st.text(max_size=3))
FIELD = st.sampled_from(["atol", "rtol", "nmse", "bias", "k", "floor", "tol", "Atol", ""])
TOLERANCE_TABLES = st.dictionaries(
    st.sampled_from(["gemm", "rms_norm", "model_logits", "golden", "generation_margin",
                     "gemmm", "", "f32"]),
    st.one_of(st.dictionaries(st.sampled_from(["f32", "f16", "bf16", "f64", "fp8", ""]),
                              st.one_of(st.dictionaries(FIELD, SCALAR, max_size=5), SCALAR),
                              max_size=3), SCALAR),
    max_size=3)


@FUZZ
@given(content=st.one_of(TOLERANCE_TABLES.map(_tolerance_text), st.text(max_size=40),
                         st.binary(max_size=40)))
def test_fuzzed_tolerance_files(policy_dir, content: str | bytes) -> None:
    from conformance.judge import TolerancePolicy
    from conformance.plugin.options import checked

    path = policy_dir / "overlay.toml"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    try:
        policy = TolerancePolicy.load(path)
    except (ValueError, FileNotFoundError) as e:
        event("refused")
        assert f"tolerance file {path}: " in str(e) and "\n" not in str(e), str(e)
        with pytest.raises(pytest.UsageError, match=f"^--tolerances {path}: "):
            checked({**SUITE_DEFAULTS, "--tolerances": str(path)}, {})
        return
    event("accepted")
    shipped = TolerancePolicy.load().table
    for check, per in policy.table.items():  # every entry is usable in its kind
        for dtype in per:
            kind = set(shipped[check][dtype])
            if kind <= {"k", "floor"}:
                policy.calibrated(check, dtype)
            elif kind == {"margin"}:
                policy.margin(check, dtype)
            else:
                policy.get(check, dtype)


DEFECT_FIELDS = st.sampled_from(["id", "device", "kind", "nodeid", "reason", "evidence",
                                 "envelope", "applies_to", "strict", "derivation", "builds",
                                 "build", "key", "name", "devices", "ids"])
DEFECT_VALUES = st.one_of(
    SCALAR, st.sampled_from(["x", "cpu", "*", "crash", "accuracy", "each", "any",
                             "pypi:0.1.0", "exports:0123456789abcdef", "libs:zz"]),
    st.lists(st.sampled_from(["a", "pypi:0.1.0", "git:1234567", ""]), max_size=2),
    st.dictionaries(st.sampled_from(["atol", "nmse", "nonfinite", "direction", "x"]), SCALAR,
                    max_size=2))
ENTRY = st.dictionaries(DEFECT_FIELDS, DEFECT_VALUES, max_size=8)


def _defect_text(sections: dict[str, list[dict]]) -> str:
    out = []
    for name, entries in sections.items():
        for e in entries:
            out.append(f"[[{_key(name)}]]")
            out += [f"{_key(k)} = {_toml_value(v)}" for k, v in e.items()]
    return "\n".join(out) + "\n"


@FUZZ
@given(content=st.one_of(
    st.dictionaries(st.sampled_from(["defect", "build", "defects"]),
                    st.lists(ENTRY, max_size=3), max_size=2).map(_defect_text),
    st.text(max_size=40)))
def test_fuzzed_defect_tables(policy_dir, content: str) -> None:
    from conformance.plugin import defects
    from infinilm_models.runtime.capabilities import BuildIdentity

    path = policy_dir / "defects.toml"
    path.write_text(content)
    try:
        chosen, tables = defects.stack([path], BuildIdentity(key="pypi:0.1.0", label="x"),
                                       "cpu")
    except pytest.UsageError as e:
        event("refused")
        assert str(e).startswith(f"--known-defects {path}: ") and "\n" not in str(e), str(e)
        return
    event("accepted")
    assert len(tables) == 1 and all(d.id for d in chosen)
