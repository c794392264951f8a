"""A checkpoint's distinct op calls as infiniop-test case files (llama.cpp's
export-graph-ops): the shapes, strides and scalars its prefill and cached decode step ask
InfiniCore for (found describe-only, conformance/support.py), each with seeded random
inputs rounded to the dtype and the float64 answer (conformance/op_answers.py), one file
per op and dtype, `<op>-<dtype>.gguf`, plus index.json and README.txt with the runner's
command for each file (the harness's atol/rtol of that op and dtype)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import op_answers
from .gguf_format import ATTRS, RENAME, Case, Operand, exportable, outputs_of, runner_command
from .gguf_format import write as write_cases


def distinct_calls(model: str, device: str, dtype: str) -> list[dict]:
    """The model's calls, one per distinct (op, operand layouts, scalars), in first-seen
    order."""
    from infinilm_models.runtime.ops._base import CachedOp

    from .support import model_calls

    seen: dict[tuple, dict] = {}

    def hook(op, tensors, compute_args, create_params) -> None:
        if CachedOp.observer is None:  # the fusion plan's probes while the model is built
            return
        metas = [None if t is None else
                 {"dtype": t.dtype.short, "shape": list(t.shape), "strides": list(t.strides)}
                 for t in tensors]
        compute = [getattr(a, "value", a) for a in compute_args]
        create = [getattr(a, "value", a) for a in create_params]
        key = (op.name, json.dumps(metas), json.dumps(compute, default=str),
               json.dumps(create, default=str))
        seen.setdefault(key, {"op": op.name, "tensor_names": list(op.tensor_names),
                              "tensors": metas, "compute": compute, "create": create})

    CachedOp.hooks = CachedOp.hooks + (hook,)
    try:
        model_calls(model, device, dtype, lambda *_: None)
    finally:
        CachedOp.hooks = tuple(h for h in CachedOp.hooks if h is not hook)
    return list(seen.values())


def _tolerance(op: str, dtype: str) -> dict[str, float]:
    from infinilm_models.runtime.ops.specs import BY_NAME

    from .judge import TolerancePolicy

    try:
        tol = TolerancePolicy.load().get(BY_NAME[op].py, dtype)
    except (KeyError, ValueError):  # no entry: a copy (rearrange), judged exactly
        return {"atol": 0.0, "rtol": 0.0}
    return {"atol": tol.atol, "rtol": tol.rtol, "nmse": tol.nmse}


def case_of(call: dict, dtype: str, source: str, rng: np.random.Generator) -> Case:
    op = call["op"]
    scalars = {name: call[where][i] for name, _, where, i in ATTRS.get(op, ())}
    present = {n: t for n, t in zip(call["tensor_names"], call["tensors"]) if t is not None}
    values = op_answers.inputs(op, {n: (t["dtype"], t["shape"]) for n, t in present.items()},
                               rng, scalars)
    answers = op_answers.answer(op, values, scalars)
    rename, outs = RENAME.get(op, {}), outputs_of(op)
    operands = []
    for name, t in present.items():
        rn = rename.get(name, name)
        v = None if rn in outs else values.get(name, np.zeros(t["shape"]))
        operands.append(Operand(rn, t["dtype"], t["shape"], t["strides"], v))
    attrs = {name: (kind, scalars[name]) for name, kind, _, _ in ATTRS.get(op, ())}
    return Case(op, operands, attrs, {rename.get(k, k): v for k, v in answers.items()},
                _tolerance(op, dtype), source)


def export(model: str, device: str, dtype: str, out: Path, seed: int = 0) -> dict:
    """Write the case files of `model` in `dtype` under `out`; returns the index."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    by_op: dict[str, list[Case]] = {}
    skipped: dict[str, int] = {}
    calls = distinct_calls(model, device, dtype)
    for call in calls:
        if not exportable(call["op"]):
            skipped[call["op"]] = skipped.get(call["op"], 0) + 1
            continue
        case = case_of(call, dtype, f"model {model} ({dtype}, {device})", rng)
        by_op.setdefault(case.op_name, []).append(case)
    files = []
    for name, cases in by_op.items():
        path = write_cases(out / f"{name}-{dtype}.gguf", cases)
        files.append({"file": path.name, "op": name, "cases": len(cases),
                      "runner_has_op": cases[0].runner_knows,
                      "command": runner_command(path, device, cases[0]),
                      "signatures": [", ".join(f"{o.name}={o.dtype}{o.shape}/{o.strides}"
                                               for o in c.operands) for c in cases]})
    index = {"model": model, "dtype": dtype, "device": device, "seed": seed,
             "distinct_calls": len(calls), "files": files,
             "not_exported": [f"{op} ({n} call(s)): no infiniop-test case layout"
                              for op, n in skipped.items()]}
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    lines = [f"{model}'s distinct op calls in {dtype}: {len(calls)} (prefill of a short prompt "
             "and one cached decode step), as infiniop-test case files.", "",
             "Run each with InfiniCore's runner (xmake build infiniop-test), with the "
             "harness's atol/rtol for the op and dtype:", ""]
    for f in files:
        lines.append(f"  {f['command']}" + ("" if f["runner_has_op"] else
                                            "   # not an op upstream's runner registers"))
    if skipped:
        lines += ["", "Calls with no case layout here: " + "; ".join(index["not_exported"])]
    (out / "README.txt").write_text("\n".join(lines) + "\n")
    return index
