"""Op cases in InfiniCore's own format: GGUF files `infiniop-test` runs (upstream
`src/infiniop-test/`, generators in `test/infiniop-test/test_generate/`).

Layout (as upstream's InfiniopTestWriter writes it): `general.architecture =
infiniop-test`, `test_count` (uint64), then per case N: `test.N.op_name` (the runner's op
name: gemm, rms_norm, rope, causal_softmax, swiglu, add, mul, rearrange, silu), its scalars
(`test.N.alpha`/`beta` float32 for gemm, `epsilon` float32, rope's `algo` int32), one
tensor `test.N.<name>` per operand holding its values contiguous in the tensor's dtype,
`test.N.<name>.strides` (element strides, last dimension first, as GGUF stores shapes),
and for the outputs no data but `test.N.<name>.shape` (outer dimension first), and
`test.N.ans`: the expected output in F64 (a copy's, rearrange, in its own dtype: the
runner compares it bit for bit). The runner lays each operand out with its
strides, runs the op and compares the output with `ans`.

Beyond upstream's keys (which its runner ignores) each case carries `test.N.atol`,
`test.N.rtol`, `test.N.nmse` (float64, the harness's bound for the op and dtype) and
`test.N.source` (the check or model it came from). The runner takes one --atol/--rtol per
run and passes an element when |a-e| <= atol or |a-e| <= rtol*max(|a|,|e|) (ours: |a-e|
<= atol + rtol*|e|, and the NMSE and scale bias, which it cannot express); each file's
README gives the command with the harness's atol/rtol. In-place calls become out-of-place
(the runner gives every operand its own memory) and views lose their offsets.

Fused ops the runner has no test for (add_rms_norm, silu_and_mul, embedding) are written
in the same layout under InfiniCore's op directory names, `<output>.ans` for a second
output: a runner that registers them reads them as they are.

    python -m conformance.gguf_cases bundle reports/<run>/bundles/<check>  # a failing check
    python -m conformance.gguf_cases model --model smollm2 --dtype f16 -o DIR
    python -m conformance.gguf_cases show FILE.gguf
"""

from __future__ import annotations

import json
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


def from_bundle(bundle: Path) -> tuple[Path | None, str]:
    """Write `<bundle>/infiniop-test.gguf` from a replay bundle (conformance/replay.py):
    the last call of the check's op, its saved inputs and the check's float64 answer.
    (the file, the runner's command line), or (None, why not)."""
    from infinilm_models.runtime.ops.specs import BY_NAME

    doc = json.loads((bundle / "calls.json").read_text())
    if not doc.get("inputs_saved", True) or not (bundle / "buffers.npz").is_file():
        return None, "the inputs were not saved"
    calls = [c for c in doc["calls"] if BY_NAME[c["op"]].py == doc.get("op")] or \
        [c for c in doc["calls"] if c["op"] != "Rearrange"] or doc["calls"]
    if not calls:
        return None, "no InfiniCore call recorded"
    exp = np.load(bundle / "expected.npz") if (bundle / "expected.npz").is_file() else {}
    expected = [(e["what"], exp[e["key"]], e["tolerance"]) for e in doc["expected"]
                if e["key"] in exp]
    case, why = from_call(calls[-1], np.load(bundle / "buffers.npz"), expected,
                          doc["nodeid"])
    if case is None:
        return None, why
    return write(bundle / FILE, [case]), runner_command(bundle / FILE, calls[-1]["device"],
                                                        case)


# -- command line -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os
    import sys

    p = argparse.ArgumentParser(prog="python -m conformance.gguf_cases",
                                description="Op cases as infiniop-test GGUF files.")
    sub = p.add_subparsers(dest="what", required=True)
    b = sub.add_parser("bundle", help="a replay bundle's case -> <bundle>/infiniop-test.gguf")
    b.add_argument("bundle", type=Path, nargs="+")
    m = sub.add_parser("model", help="a checkpoint's distinct op calls -> one file per op")
    m.add_argument("--model", required=True, help="fixture name or HF LLaMA directory")
    m.add_argument("--dtype", default="f32", choices=("f32", "f16", "bf16"))
    m.add_argument("--device", default=os.environ.get("INFINILM_DEVICE", "cpu"))
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("-o", "--out", type=Path, required=True)
    s = sub.add_parser("show", help="print a case file's cases as the runner reads them")
    s.add_argument("file", type=Path)
    args = p.parse_args(argv)
    if args.what == "bundle":
        status = 0
        for bundle in args.bundle:
            if not (bundle / "calls.json").is_file():
                print(f"error: {bundle}: no calls.json (not a replay bundle)", file=sys.stderr)
                return 2
            path, text = from_bundle(bundle)
            print(text if path is not None else f"{bundle}: no case written: {text}")
            status |= 0 if path is not None else 1
        return status
    if args.what == "model":
        from infinilm_models.runtime.device import Device
        from infinilm_models.runtime.library import set_default_backend

        from .gguf_model import export

        set_default_backend(Device.parse(args.device).type)
        index = export(args.model, args.device, args.dtype, args.out, args.seed)
        print((args.out / "README.txt").read_text(), end="")
        return 0 if index["files"] else 1
    doc = read(args.file)
    print(f"{args.file}: {doc['architecture']}, {doc['test_count']} case(s)")
    for i, c in enumerate(doc["cases"]):
        attrs = {k: v for k, v in c["attrs"].items() if not k.endswith((".shape", ".strides"))}
        print(f"test.{i}: {c['op_name']} {attrs}")
        for name, t in c["tensors"].items():
            print(f"  {name}: {t['type']} shape={t['shape']} strides={t['strides']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
