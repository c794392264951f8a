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
from pathlib import Path

import numpy as np

from .gguf_format import (  # noqa: F401 - the format's names, re-exported for readers
    ATTRS,
    EXACT,
    FILE,
    NOT_IN_RUNNER,
    RENAME,
    RUNNER,
    RUNNER_OUTPUTS,
    Case,
    Operand,
    expectations,
    exportable,
    from_call,
    logical,
    outputs_of,
    read,
    runner_command,
    write,
)


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
