"""The file format of InfiniCore's own op cases: GGUF files `infiniop-test` runs
(upstream `src/infiniop-test/`, generators in `test/infiniop-test/test_generate/`); what
conformance/gguf_cases.py (a bundle's case, the command line) and gguf_model.py (a
checkpoint's op calls) write. The layout is described in gguf_cases.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .op_answers import OUTPUTS

RUNNER = {"Gemm": "gemm", "RMSNorm": "rms_norm", "RoPE": "rope",
          "CausalSoftmax": "causal_softmax", "SwiGLU": "swiglu", "Add": "add", "Mul": "mul",
          "Rearrange": "rearrange", "Silu": "silu"}
NOT_IN_RUNNER = {"AddRMSNorm": "add_rms_norm", "SiluAndMul": "silu_and_mul",
                 "Embedding": "embedding"}
RENAME = {"SwiGLU": {"up": "a", "gate": "b"}}  # our spec's names -> the runner's
# The runner's outputs (no data in the file); gemm's C is an input too (beta).
RUNNER_OUTPUTS = {"Gemm": ()}
# name, GGUF type, from ("compute" or "create" scalars), index
ATTRS = {"Gemm": (("alpha", "f32", "compute", 0), ("beta", "f32", "compute", 1)),
         "RMSNorm": (("epsilon", "f32", "create", 0),),
         "AddRMSNorm": (("epsilon", "f32", "create", 0),),
         "RoPE": (("algo", "i32", "create", 0),)}
FILE = "infiniop-test.gguf"
EXACT = frozenset({"Rearrange"})  # the runner's rearrange test compares with allEqual


@dataclass
class Operand:
    name: str  # the runner's
    dtype: str
    shape: list[int]
    strides: list[int]
    values: np.ndarray | None  # None: an output (the runner allocates it)


@dataclass
class Case:
    op: str  # C op name (specs.py)
    operands: list[Operand]
    attrs: dict[str, tuple[str, float]]
    answers: dict[str, np.ndarray]  # runner tensor name -> float64
    tolerance: dict[str, float] = field(default_factory=dict)  # atol, rtol, nmse
    source: str = ""

    @property
    def op_name(self) -> str:
        return RUNNER.get(self.op) or NOT_IN_RUNNER[self.op]

    @property
    def runner_knows(self) -> bool:
        return self.op in RUNNER


def exportable(op: str) -> bool:
    return op in RUNNER or op in NOT_IN_RUNNER


def _ggml(dtype: str):
    from gguf import GGMLQuantizationType as Q

    return {"f16": Q.F16, "bf16": Q.BF16, "f32": Q.F32, "f64": Q.F64, "i8": Q.I8,
            "i16": Q.I16, "i32": Q.I32, "i64": Q.I64, "bool": Q.Q8_K}[dtype]


def outputs_of(op: str) -> tuple[str, ...]:
    names = RUNNER_OUTPUTS.get(op, OUTPUTS[op])
    return tuple(RENAME.get(op, {}).get(n, n) for n in names)


def write(path: Path, cases: list[Case]) -> Path:
    """One GGUF file of `cases` (test.0 ... test.N-1), written whole or not at all."""
    import gguf

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    w = gguf.GGUFWriter(str(tmp), "infiniop-test")
    w.add_uint64("test_count", len(cases))
    for i, c in enumerate(cases):
        def key(s: str, i=i) -> str:
            return f"test.{i}.{s}"
        w.add_string(key("op_name"), c.op_name)
        for name, (kind, value) in c.attrs.items():
            (w.add_int32 if kind == "i32" else w.add_float32)(key(name), value)
        for o in c.operands:
            w.add_array(key(f"{o.name}.strides"), [int(s) for s in reversed(o.strides)])
            npd = _numpy(o.dtype)
            if o.values is None:
                w.add_array(key(f"{o.name}.shape"), [int(s) for s in o.shape])
                data = np.empty((0,) * len(o.shape), dtype=npd)
            elif 0 in o.strides:  # broadcast: one copy of the repeated values, as upstream
                w.add_array(key(f"{o.name}.shape"), [int(s) for s in o.shape])
                data = o.values[tuple(slice(0, 1) if s == 0 else slice(None)
                                      for s in o.strides)]
            else:
                data = o.values
            w.add_tensor(key(o.name), np.ascontiguousarray(data.astype(npd)),
                         raw_dtype=_ggml(o.dtype))
        for j, (name, ans) in enumerate(c.answers.items()):
            # a copy is compared bit for bit (allEqual): its answer in the copy's dtype
            dtype = next(o.dtype for o in c.operands if o.name == name) \
                if c.op in EXACT else "f64"
            w.add_tensor(key("ans" if j == 0 else f"{name}.ans"),
                         np.ascontiguousarray(np.asarray(ans).astype(_numpy(dtype))),
                         raw_dtype=_ggml(dtype))
        for k in ("atol", "rtol", "nmse"):
            if c.tolerance.get(k) is not None:
                w.add_float64(key(k), float(c.tolerance[k]))
        w.add_string(key("source"), c.source)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _numpy(dtype: str) -> np.dtype:
    from infinilm_models.runtime import DType

    return DType.parse(dtype).numpy


def read(path: Path) -> dict:
    """A case file as InfiniCore's runner reads it: {"architecture", "test_count", "cases":
    [{"op_name", "attrs", "tensors": {name: {"type", "shape", "strides", "data"}}}]}, shapes
    and strides outer dimension first (the file stores both the other way round)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    kv = {f.name: f.contents() for f in r.fields.values()}
    count = int(kv["test_count"])
    cases = []
    for i in range(count):
        prefix = f"test.{i}."
        attrs = {k[len(prefix):]: v for k, v in kv.items() if k.startswith(prefix)}
        tensors = {}
        for t in r.tensors:
            if not t.name.startswith(prefix):
                continue
            name = t.name[len(prefix):]
            shape = attrs.get(f"{name}.shape") or [int(n) for n in reversed(t.shape)]
            strides = attrs.get(f"{name}.strides")
            data = np.asarray(t.data)
            if t.tensor_type.name == "BF16":  # the reader hands BF16 out as raw bytes
                data = np.frombuffer(data.tobytes(), dtype=_numpy("bf16"))
            tensors[name] = {"type": t.tensor_type.name, "shape": list(shape),
                             "strides": list(reversed(strides)) if strides else None,
                             "data": data.reshape([int(n) for n in reversed(t.shape)])}
        cases.append({"op_name": attrs.pop("op_name"), "attrs": attrs, "tensors": tensors})
    return {"architecture": kv.get("general.architecture"), "test_count": count,
            "cases": cases}


def runner_command(path: Path, device: str, case: Case | None) -> str:
    kind, _, index = device.partition(":")
    flag = f"--{kind}" + (f":{index}" if index and kind != "cpu" else "")
    tol = case.tolerance if case is not None else {}
    extra = "".join(f" --{k} {tol[k]:g}" for k in ("atol", "rtol") if tol.get(k) is not None)
    return f"infiniop-test {path} {flag}{extra}"


# -- from a traced call (a check's replay bundle) -----------------------------------------


def logical(raw: np.ndarray, t: dict) -> np.ndarray:
    """The values a traced tensor view saw, contiguous: its buffer's bytes at its offset,
    shape and strides (in elements)."""
    npd = _numpy(t["dtype"])
    flat = np.frombuffer(np.ascontiguousarray(raw).tobytes(), dtype=npd)
    view = np.lib.stride_tricks.as_strided(
        flat[t["offset"]:], shape=t["shape"],
        strides=[s * npd.itemsize for s in t["strides"]], writeable=False)
    return np.ascontiguousarray(view)


def expectations(expected: dict) -> list[tuple[str, np.ndarray, dict | None]]:
    """A check's expected outputs (verify.expected: what -> (array, Tolerance, dtype)) as
    from_call takes them."""
    return [(what, arr, None if tol is None else {"atol": tol.atol, "rtol": tol.rtol,
                                                  "nmse": tol.nmse})
            for what, (arr, tol, _) in expected.items()]


def from_call(call: dict, buffers, expected: list[tuple[str, np.ndarray, dict | None]],
              source: str) -> tuple[Case | None, str]:
    """The case of one traced call and the check's expectations ((what, float64, bound)):
    "output" (or the output's own name) is the answer. (None, why) when it cannot be."""
    op = call["op"]
    if not exportable(op):
        return None, f"{op}: no infiniop-test case layout for this op"
    rename = RENAME.get(op, {})
    outs = outputs_of(op)
    written = tuple(rename.get(n, n) for n in OUTPUTS[op])
    operands = []
    for name, t in zip(call["tensor_names"], call["tensors"]):
        if t is None:
            continue
        rn = rename.get(name, name)
        if rn in outs:
            operands.append(Operand(rn, t["dtype"], t["shape"], t["strides"], None))
            continue
        if t["buffer"] not in buffers:
            return None, f"{op}: the input {name} was not saved (too large)"
        operands.append(Operand(rn, t["dtype"], t["shape"], t["strides"],
                                logical(buffers[t["buffer"]], t).astype(np.float64)))
    answers, tolerance = {}, {}
    for what, arr, tol in expected:
        target = written[0] if what == "output" else rename.get(what, what)
        if target not in written or target in answers:
            continue
        shape = next(o.shape for o in operands if o.name == target)
        if list(np.shape(arr)) != list(shape):
            continue
        answers[target] = np.asarray(arr, dtype=np.float64)
        if not tolerance:
            tolerance = {k: (tol or {}).get(k, 0.0) for k in ("atol", "rtol", "nmse")}
    if written[0] not in answers:
        return None, f"{op}: the check recorded no float64 answer for {written[0]}"
    answers = {k: answers[k] for k in written if k in answers}
    scalars = {"compute": [a["value"] for a in call["compute_args"]],
               "create": [a["value"] for a in call["create_params"]]}
    attrs = {name: (kind, scalars[where][i]) for name, kind, where, i in ATTRS.get(op, ())}
    return Case(op, operands, attrs, answers, tolerance, source), ""
