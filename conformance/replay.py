"""Replay bundles: a failing or crashing op check, alone, against any InfiniCore build.

While an op check runs, its InfiniCore calls are traced (op, creation scalars, compute
scalars, every tensor's dtype/shape/strides/offset and the bytes of its buffer before the
first call that touched it). When the check fails, the plugin writes a bundle:

    reports/<run>/bundles/<check>/calls.json    the calls, the expected outputs' tolerances
                                 buffers.npz    the input buffers, byte for byte
                                 expected.npz   the float64 references the check used
                                 README.txt     the command that replays it

and a crashing check is run once more with each call written to disk before it is made,
so the call that kills the process is left behind. Replay:

    INFINI_ROOT=/path/to/build python -m conformance.replay reports/<run>/bundles/<check>

allocates the buffers on the device, makes the same calls, and judges the output with the
same tolerance (exit 0: within it now; 1: still wrong; a crash reproduces as a crash).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

PENDING_ENV = "INFINILM_REPLAY_PENDING"
MAX_BYTES = 256 * 1024 * 1024  # inputs beyond this are not copied (the pytest command remains)
KEEP_CALLS = 16
_CTYPES = {"c_float": ctypes.c_float, "c_double": ctypes.c_double, "c_size_t": ctypes.c_size_t,
           "c_int": ctypes.c_int, "c_int64": ctypes.c_int64, "c_ssize_t": ctypes.c_ssize_t}


def _scalar(v: Any) -> dict:
    if isinstance(v, ctypes.Array):  # per-row host arrays (random_sample_batch)
        return {"type": f"array:{v._type_.__name__}", "value": list(v)}
    if isinstance(v, ctypes._SimpleCData):
        return {"type": type(v).__name__, "value": v.value}
    if isinstance(v, bool):
        return {"type": "bool", "value": v}
    if isinstance(v, int):
        return {"type": "int", "value": v}
    if isinstance(v, float):
        return {"type": "float", "value": v}
    return {"type": "none", "value": None} if v is None else {"type": "repr", "value": repr(v)}


def _unscalar(d: dict) -> Any:
    t, v = d["type"], d["value"]
    if t.startswith("array:") and t[6:] in _CTYPES:
        return (_CTYPES[t[6:]] * len(v))(*v)
    if t in _CTYPES:
        return _CTYPES[t](v)
    return v


class Trace:
    """The InfiniCore calls of one check (the last KEEP_CALLS of them)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.buffers: dict[str, np.ndarray] = {}
        self._keys: dict[int, tuple[str, object]] = {}  # id(DeviceBuffer) -> (key, buffer)
        self.bytes = 0
        self.too_large = False
        self.pending = os.environ.get(PENDING_ENV)
        # what the bundle says about its check (the plugin fills it: node id, op, rerun)
        self.meta: dict = {"nodeid": "(crash re-run)"}

    @classmethod
    def start(cls) -> Trace:
        from infinilm_models.runtime.ops._base import CachedOp

        t = cls()
        CachedOp.hooks = CachedOp.hooks + (t.record,)
        return t

    def stop(self) -> None:
        from infinilm_models.runtime.ops._base import CachedOp

        CachedOp.hooks = tuple(h for h in CachedOp.hooks if h != self.record)

    def _buffer_key(self, buf) -> str:
        hit = self._keys.get(id(buf))
        if hit is not None and hit[1] is buf:
            return hit[0]
        key = f"b{len(self._keys)}"
        self._keys[id(buf)] = (key, buf)  # the reference keeps the id from being reused
        if self.bytes + buf.nbytes > MAX_BYTES:
            self.too_large = True
        elif buf.nbytes:
            from infinilm_models.runtime.memory import MemcpyKind, memcpy

            host = np.empty(buf.nbytes, dtype=np.uint8)
            memcpy(host.ctypes.data, buf.ptr, buf.nbytes, MemcpyKind.D2H, buf.device)
            self.buffers[key] = host
            self.bytes += buf.nbytes
        return key

    def record(self, op, tensors, compute_args, create_params) -> None:
        call = {
            "op": op.name, "device": str(tensors[0].device),
            "tensor_names": list(op.tensor_names),
            # None: an optional tensor left out (a NULL descriptor and pointer)
            "tensors": [None if t is None else
                        {"buffer": self._buffer_key(t.buffer), "dtype": t.dtype.short,
                         "shape": list(t.shape), "strides": list(t.strides),
                         "offset": t.offset, "buffer_nbytes": t.buffer.nbytes}
                        for t in tensors],
            "compute_args": [_scalar(a) for a in compute_args],
            "create_params": [_scalar(a) for a in create_params],
        }
        self.calls = (self.calls + [call])[-KEEP_CALLS:]
        if self.pending:
            # About to make a call that may kill this process: leave it on disk first.
            _write(Path(self.pending), self, {}, {**self.meta, "crashed": True})


def bundle_dir(run_dir: Path, nodeid: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::", 1)[-1])[:120]
    return run_dir / "bundles" / slug


def write_bundle(run_dir: Path, item, verify, meta: dict) -> str | None:
    """The failing check's calls and expected outputs; returns the path relative to the
    run directory, or None when nothing was traced. `meta`: what the bundle says about its
    check (node id, op, the command rerunning it: the plugin's `bundle_meta`)."""
    trace: Trace = verify.trace
    if not trace.calls:
        return None
    target = bundle_dir(run_dir, item.nodeid)
    _write(target, trace, verify.expected, meta)
    return str(target.relative_to(run_dir))


def write_case(folder: Path, item, verify, op: str) -> Path | None:
    """--infiniop-cases all: a check's infiniop-test case file, `<folder>/<check>.gguf`
    (a failing check's goes into its bundle); `op` the check's op."""
    from .gguf_cases import expectations, from_call, write

    trace: Trace = verify.trace
    calls = [c for c in trace.calls if _py(c["op"]) == op]
    if not calls or trace.too_large:
        return None
    case, _ = from_call(calls[-1], trace.buffers, expectations(verify.expected), item.nodeid)
    if case is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return write(folder / f"{bundle_dir(folder, item.nodeid).name}.gguf", [case])


def _py(c_op: str) -> str:
    from infinilm_models.runtime.ops.specs import BY_NAME

    return BY_NAME[c_op].py


def _write(target: Path, trace: Trace, expected: dict, meta: dict) -> None:
    target.mkdir(parents=True, exist_ok=True)
    used = {t["buffer"] for c in trace.calls for t in c["tensors"] if t is not None}
    doc = {
        **meta,
        "calls": trace.calls,
        "inputs_saved": not trace.too_large,
        "expected": [{"what": what, "key": f"e{i}", "dtype": dt,
                      "tolerance": None if tol is None else
                      {"atol": tol.atol, "rtol": tol.rtol, "nmse": tol.nmse, "bias": tol.bias,
                       "source": tol.source}}
                     for i, (what, (_, tol, dt)) in enumerate(expected.items())],
        "command": f"python -m conformance.replay {target}",
    }
    if not trace.too_large:
        np.savez(target / "buffers.npz", **{k: v for k, v in trace.buffers.items() if k in used})
    if expected:
        np.savez(target / "expected.npz",
                 **{f"e{i}": np.asarray(arr, dtype=np.float64)
                    for i, (arr, _, _) in enumerate(expected.values())})
    (target / "calls.json").write_text(json.dumps(doc, indent=1) + "\n")
    case = None if meta.get("crashed") or trace.too_large else _gguf_case(target)
    (target / "README.txt").write_text(_readme(target, trace, meta, case))


def _gguf_case(target: Path) -> str:
    """infiniop-test.gguf beside the bundle (InfiniCore's own runner), or why not."""
    from .gguf_cases import from_bundle

    try:
        path, text = from_bundle(target)
    except Exception as e:  # noqa: BLE001 - the bundle stands without it
        return f"no infiniop-test case: {type(e).__name__}: {e}"
    if path is None:
        return f"no infiniop-test case: {text}"
    return (f"The same call as an infiniop-test case (InfiniCore's runner, built with "
            f"`xmake build infiniop-test`; the harness's atol/rtol):\n  {text}\n")


def _readme(target: Path, trace: Trace, meta: dict, case: str | None) -> str:
    from infinilm_models.runtime.library import load

    device = trace.calls[-1]["device"] if trace.calls else "cpu"
    try:
        root = str(load().root)
    except Exception:  # noqa: BLE001 - the README still names the command
        root = os.environ.get("INFINI_ROOT", "/path/to/infinicore")
    lines = [f"Replay of {meta['nodeid']}", "",
             "Replay the recorded InfiniCore calls (this build, this device; another build: "
             "another INFINI_ROOT):",
             f"  cd {Path(__file__).resolve().parents[1]} && INFINI_ROOT={root} "
             f"{sys.executable} -m conformance.replay "
             f"{target.resolve()} --device {device}", ""]
    if meta.get("rerun"):
        lines += ["Run the check itself again (same build, device, dtype and case):",
                  f"  {meta['rerun']}", ""]
    if trace.too_large:
        lines += ["The inputs were too large to save: only the check itself reruns it.", ""]
    if meta.get("crashed"):
        lines += ["This check crashed: calls.json ends with the call that killed it.", ""]
    if case:
        lines += [case]
    return "\n".join(lines) + "\n"


# -- replay -------------------------------------------------------------------------------


def replay(bundle: Path, device: str | None = None) -> int:
    from infinilm_models.runtime import Device, DeviceBuffer, Tensor
    from infinilm_models.runtime.memory import MemcpyKind, memcpy
    from infinilm_models.runtime.ops._base import CachedOp

    from . import judge

    doc = json.loads((bundle / "calls.json").read_text())
    if not doc.get("inputs_saved", True):
        print(f"{bundle}: the inputs were too large to save; re-run the check: pytest "
              f"'{doc['nodeid']}'")
        return 2
    saved = np.load(bundle / "buffers.npz") if (bundle / "buffers.npz").is_file() else {}
    buffers: dict[str, DeviceBuffer] = {}
    out = None
    for n, call in enumerate(doc["calls"], 1):
        dev = Device.parse(device or call["device"])
        tensors = []
        for t in call["tensors"]:
            if t is None:
                tensors.append(None)
                continue
            buf = buffers.get(t["buffer"])
            if buf is None:
                buf = buffers[t["buffer"]] = DeviceBuffer(dev, t["buffer_nbytes"])
                if t["buffer"] in saved:
                    host = np.ascontiguousarray(saved[t["buffer"]])
                    memcpy(buf.ptr, host.ctypes.data, host.nbytes, MemcpyKind.H2D, dev)
            tensors.append(Tensor(buf, t["dtype"], t["shape"], t["strides"], t["offset"]))
        print(f"call {n}/{len(doc['calls'])}: infiniop{call['op']}("
              + ", ".join(f"{name}={x.describe()}" for name, x in
                          zip(call["tensor_names"], tensors) if x is not None) + ")",
              flush=True)
        CachedOp.named(call["op"])(tensors, *[_unscalar(a) for a in call["compute_args"]],
                                   create_params=tuple(_unscalar(a)
                                                       for a in call["create_params"]))
        out = tensors[0]
    if doc.get("crashed"):
        print("the last call returned: it did not crash this time")
        return 0
    if not doc["expected"]:
        print("no expected output recorded")
        return 2
    exp = np.load(bundle / "expected.npz")
    status = 0
    for e in doc["expected"]:
        want = exp[e["key"]]
        got = out.numpy().astype(np.float64)
        if got.shape != want.shape:
            whole = Tensor(out.buffer, out.dtype, [out.buffer.nbytes // out.dtype.itemsize])
            if whole.numel != want.size:
                print(f"{e['what']}: expected shape {want.shape} does not match the output "
                      f"{got.shape}; not compared")
                continue
            got = whole.numpy().astype(np.float64).reshape(want.shape)
        if e["tolerance"] is None:
            c = judge.exact(got, want, e["what"], standard="copy")
        else:
            t = e["tolerance"]
            c = judge.close(got, want, judge.Tolerance(t["atol"], t["rtol"], t["nmse"],
                                                       t["bias"], t["source"]),
                            e["what"], dtype=e["dtype"])
        print(("PASS " if c.passed else "FAIL ") + c.reason)
        print("  " + ", ".join(f"{k}={v:.4g}" for k, v in c.metrics.items()
                               if isinstance(v, (int, float))))
        status |= 0 if c.passed else 1
    return status


def _device(value: str) -> str:
    from infinilm_models.arguments import nonempty
    from infinilm_models.runtime import Device

    try:
        Device.parse(nonempty(value))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def main(argv: list[str] | None = None) -> int:
    from infinilm_models.arguments import OneLineParser, nonempty

    p = OneLineParser(
        prog="python -m conformance.replay",
        description="Replay the InfiniCore calls of a failing or crashing op check from its "
                    "bundle (reports/<run>/bundles/<check>) on the InfiniCore build that "
                    "INFINI_ROOT (or INFINILM_BACKEND's default prefix) names, and judge "
                    "the output with the check's own tolerance.")
    p.add_argument("bundle", type=lambda v: Path(nonempty(v)),
                   help="the bundle directory (holds calls.json)")
    p.add_argument("--device", default=None, type=_device,
                   help="device to replay on (default: the one recorded, e.g. cpu:0)")
    args = p.parse_args(argv)
    if not (args.bundle / "calls.json").is_file():
        print(f"error: {args.bundle}: no calls.json (not a replay bundle)", file=sys.stderr)
        return 2
    try:
        doc = json.loads((args.bundle / "calls.json").read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("calls"), list):
            raise ValueError("expected an object with a 'calls' list")
    except (OSError, ValueError) as e:
        print(f"error: {args.bundle / 'calls.json'}: not a replay bundle's calls.json: {e}",
              file=sys.stderr)
        return 2
    if args.device:
        kind = args.device.split(":")[0]
        os.environ.setdefault("INFINILM_BACKEND", kind)
    return replay(args.bundle, args.device)


if __name__ == "__main__":
    sys.exit(main())
