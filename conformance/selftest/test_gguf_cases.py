"""infiniop-test case files (conformance/gguf_cases.py) read back with the `gguf` package
against what InfiniCore's own tools use: the layout upstream's generators write
(test/infiniop-test/test_generate/__init__.py, InfiniopTestWriter: general.architecture
"infiniop-test", test_count uint64, test.N.<key>; testcases/<op>.py: strides last
dimension first, an output's `.shape` outer dimension first and no data) and the names its
runner reads (src/infiniop-test/src/ops/<op>.cpp: attribute_names, tensor_names,
output_names). The answers are checked against float64 formulas written here, on the
operand values read back from the file."""

from __future__ import annotations

import numpy as np
import pytest

from conformance.gguf_cases import read, write
from conformance.gguf_model import case_of

# Upstream 2cec6ce6's runner, per op: attributes (GGUF type), tensors, outputs.
RUNNER = {
    "gemm": ({"alpha": "FLOAT32", "beta": "FLOAT32"}, {"a", "b", "c", "ans"}, set()),
    "rms_norm": ({"epsilon": "FLOAT32"}, {"x", "w", "y", "ans"}, {"y"}),
    "rope": ({"algo": "INT32"}, {"y", "x", "pos_ids", "sin_table", "cos_table", "ans"}, {"y"}),
    "causal_softmax": ({}, {"x", "y", "ans"}, {"y"}),
    # no runner test upstream: InfiniCore's C names (include/infiniop/ops/add_rms_norm.h)
    "add_rms_norm": ({"epsilon": "FLOAT32"},
                     {"y", "residual_out", "a", "b", "weight", "ans", "residual_out.ans"},
                     {"y", "residual_out"}),
}


def _t(dtype, shape, strides=None):
    if strides is None:
        strides = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]
    return {"dtype": dtype, "shape": list(shape), "strides": list(strides)}


# One call per op as the model makes them: W.T (column-major b) with beta = 1, a strided
# norm input, RoPE in place on k inside a fused qkv buffer, batched softmax rows over a
# longer cache (q < k), the fused residual add + norm with f32 weights under bf16.
CALLS = {
    "gemm": {"op": "Gemm", "tensor_names": ["c", "a", "b"], "compute": [0.5, 1.0],
             "create": [], "tensors": [_t("f16", [5, 24]), _t("f16", [5, 16], [20, 1]),
                                       _t("f16", [16, 24], [1, 16])]},
    "rms_norm": {"op": "RMSNorm", "tensor_names": ["y", "x", "w"], "compute": [],
                 "create": [1e-5], "tensors": [_t("bf16", [3, 40]), _t("bf16", [3, 40], [45, 1]),
                                               _t("bf16", [40])]},
    "rope": {"op": "RoPE", "tensor_names": ["y", "x", "pos_ids", "sin_table", "cos_table"],
             "compute": [], "create": [1],
             "tensors": [_t("f32", [4, 2, 8], [40, 8, 1]), _t("f32", [4, 2, 8], [40, 8, 1]),
                         _t("i32", [4]), _t("f32", [32, 4]), _t("f32", [32, 4])]},
    "causal_softmax": {"op": "CausalSoftmax", "tensor_names": ["y", "x"], "compute": [],
                       "create": [], "tensors": [_t("f32", [3, 2, 9], [40, 20, 1]),
                                                 _t("f32", [3, 2, 9])]},
    "add_rms_norm": {"op": "AddRMSNorm", "compute": [], "create": [1e-6],
                     "tensor_names": ["y", "residual_out", "a", "b", "weight"],
                     "tensors": [_t("bf16", [2, 3, 16]), _t("bf16", [2, 3, 16]),
                                 _t("bf16", [2, 3, 16], [64, 20, 1]), _t("bf16", [2, 3, 16]),
                                 _t("f32", [16])]},
}


def _silu(x):
    return x / (1 + np.exp(-x))


def expected(op: str, v: dict, attrs: dict) -> dict[str, np.ndarray]:
    """The answers, from the operands in the file: the ops' definitions, written here."""
    if op == "gemm":
        return {"ans": attrs["alpha"] * v["a"] @ v["b"] + attrs["beta"] * v["c"]}
    if op == "rms_norm":
        x = v["x"]
        return {"ans": x / np.sqrt((x * x).mean(-1, keepdims=True) + attrs["epsilon"]) * v["w"]}
    if op == "rope":  # GPT-NeoX (algo 1): the halves of head_dim
        x, pos = v["x"], v["pos_ids"].astype(int)
        s, c = v["sin_table"][pos][:, None], v["cos_table"][pos][:, None]
        h = x.shape[-1] // 2
        return {"ans": np.concatenate([x[..., :h] * c - x[..., h:] * s,
                                       x[..., :h] * s + x[..., h:] * c], -1)}
    if op == "causal_softmax":
        x = v["x"]
        q, k = x.shape[-2:]
        keep = np.arange(k)[None] <= (k - q + np.arange(q))[:, None]
        e = np.where(keep, np.exp(x - x.max(-1, keepdims=True)), 0.0)
        return {"ans": e / e.sum(-1, keepdims=True)}
    r = v["a"] + v["b"]
    y = r / np.sqrt((r * r).mean(-1, keepdims=True) + attrs["epsilon"]) * v["weight"]
    return {"ans": y, "residual_out.ans": r}


@pytest.mark.parametrize("op", list(CALLS))
def test_case_file_round_trip(op, tmp_path):
    call = CALLS[op]
    case = case_of(call, call["tensors"][0]["dtype"], "selftest",
                   np.random.default_rng(7))
    path = write(tmp_path / f"{op}.gguf", [case, case])
    doc = read(path)
    assert doc["architecture"] == "infiniop-test" and doc["test_count"] == 2
    attr_types, names, outputs = RUNNER[op]
    got = doc["cases"][1]
    assert got["op_name"] == op
    assert set(got["tensors"]) == names
    import gguf

    raw = gguf.GGUFReader(str(path))
    fields, infos = raw.fields, {t.name: t for t in raw.tensors}
    assert [t.name for t in fields["test_count"].types] == ["UINT64"]
    for name, gtype in attr_types.items():
        assert [t.name for t in fields[f"test.1.{name}"].types] == [gtype], name
    by_name = dict(zip(call["tensor_names"], call["tensors"]))
    rename = {"up": "a", "gate": "b"} if op == "swiglu" else {}
    values = {}
    for cname, meta in by_name.items():
        t = got["tensors"][rename.get(cname, cname)]
        # on disk as the runner reads them: strides (elements) and a tensor's dimensions
        # last dimension first; an output's .shape outer dimension first
        key = f"test.1.{rename.get(cname, cname)}"
        assert list(fields[f"{key}.strides"].contents()) == meta["strides"][::-1], cname
        assert t["strides"] == meta["strides"], cname
        assert t["type"] == {"f16": "F16", "bf16": "BF16", "f32": "F32", "i32": "I32"}[
            meta["dtype"]]
        if cname in outputs:
            assert t["data"].size == 0 and t["shape"] == meta["shape"], cname
            assert list(fields[f"test.1.{cname}.shape"].contents()) == meta["shape"]
        else:
            assert [int(n) for n in infos[key].shape] == meta["shape"][::-1], cname
            assert list(t["data"].shape) == meta["shape"], cname
            values[cname] = t["data"].astype(np.float64)
    attrs = {k: v for k, v in got["attrs"].items() if k in attr_types}
    assert attrs.get("alpha", 0.5) == 0.5 and attrs.get("beta", 1.0) == 1.0
    for key, want in expected(op, values, attrs).items():
        ans = got["tensors"][key]
        assert ans["type"] == "F64" and ans["strides"] is None
        np.testing.assert_allclose(ans["data"], want, rtol=1e-6, atol=1e-7, err_msg=key)
    # the harness's bound rides along (the runner ignores keys it does not read)
    assert got["attrs"]["atol"] > 0 and got["attrs"]["rtol"] > 0
    assert got["attrs"]["source"] == "selftest"


def test_runner_command_names_device_and_bound(tmp_path):
    from conformance.gguf_cases import runner_command

    case = case_of(CALLS["rms_norm"], "bf16", "selftest", np.random.default_rng(0))
    cmd = runner_command(tmp_path / "x.gguf", "nvidia:1", case)
    assert cmd == (f"infiniop-test {tmp_path / 'x.gguf'} --nvidia:1 "
                   f"--atol {case.tolerance['atol']:g} --rtol {case.tolerance['rtol']:g}")
    assert runner_command(tmp_path / "x.gguf", "cpu", None).endswith(" --cpu")
