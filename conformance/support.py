"""The support probe (`pytest conformance/ops --support`): which op x dtype x layout cases
a build accepts, in seconds, computing nothing (llama.cpp's `test-backend-ops -m support`).

Every op check runs as it always does, with the runtime in describe-only mode
(`infinilm_models.runtime.ops.describe_only`): each InfiniCore call creates its descriptor
and asks its workspace size, as a real call would, and computes nothing. Each call's
outcome is one row: the op, the dtype (of its first floating-point tensor), the signature
the build was asked for (every tensor's dtype, shape and strides, the creation scalars),
and what the build answered: accepted, refused with its status (NOT_IMPLEMENTED,
BAD_TENSOR_STRIDES, ...) or not exported. With `--model`, the checkpoint's own forward
(a prefill and a cached decode step, on weights of its shapes left uninitialised) is
probed the same way. The rows become the op x dtype matrix (`SupportMatrix` in
results.json), shown on the console, in the report and as a Markdown table (support.md).

Accepted means a descriptor was created: whether the kernel then computes right is what
the op checks themselves (run without --support) decide.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from .record import CheckRecord, SupportCell, SupportMatrix

PARTS = "support"  # run_dir/support/<worker>-<pid>.jsonl: the rows of each process
MARKS = {"supported": "✅", "partial": "🟡", "refused": "❌", "not_exported": "➖",
         "crashed": "💥"}
PROBE_PROMPT = 7  # tokens of the probed prefill (odd, as the op checks' shapes are)


def signature(op, tensors: Sequence, create_params: tuple) -> str:
    """What the build was asked for: `c=f32[37,576]/[576,1], ...; params=(1e-05,)`."""
    parts = [f"{n}={t.dtype.short}{list(t.shape)}/{list(t.strides)}"
             for n, t in zip(op.tensor_names, tensors) if t is not None]
    vals = tuple(getattr(p, "value", p) for p in create_params)
    return ", ".join(parts) + (f"; params={vals}" if vals else "")


def principal_dtype(tensors: Sequence) -> str:
    """The column of a call: its first floating-point tensor's dtype (the output's for most
    ops; the logits' for a sampler)."""
    for t in tensors:
        if t is not None and t.dtype.is_float:
            return t.dtype.short
    return next(t.dtype.short for t in tensors if t is not None)


def outcome(error: BaseException | None) -> tuple[str, str | None]:
    """(state, status) of one call: supported, refused with the status name, not_exported."""
    from infinilm_models.runtime.library import InfiniError, NotExported

    if error is None:
        return "supported", None
    if isinstance(error, NotExported):
        return "not_exported", "NOT_EXPORTED"
    if isinstance(error, InfiniError):
        return "refused", f"{error.status_name.removeprefix('INFINI_STATUS_')} ({error.status})"
    return "refused", f"{type(error).__name__}: {str(error)[:200]}"


class Probe:
    """The describe-only calls of the check (or model) in progress, as rows."""

    def __init__(self, source: str = "checks") -> None:
        self.source = source
        self.rows: list[dict] = []

    def observe(self, op, tensors, create_params, error) -> None:
        state, status = outcome(error)
        self.rows.append({"op": op.spec.py, "dtype": principal_dtype(tensors),
                          "signature": signature(op, tensors, create_params),
                          "state": state, "status": status, "source": self.source})

    def take(self) -> list[dict]:
        rows, self.rows = self.rows, []
        return rows


def verdict(rows: list[dict]) -> tuple[str, str]:
    """(status, message) of an op check under --support, from its calls alone (outputs are
    left unwritten, so the check's own comparisons mean nothing): unsupported when the
    build refused a call, else passed (its descriptors were created)."""
    refused = [r for r in rows if r["state"] != "supported"]
    if refused:
        r = refused[0]
        return "unsupported", f"support probe: {r['op']} {r['status']}: {r['signature']}"
    ops = sorted({r["op"] for r in rows})
    return "passed", (f"support probe: {len(rows)} descriptor(s) created ({', '.join(ops)}); "
                      "nothing computed")


def append_rows(run_dir: Path, worker: str, rows: list[dict]) -> None:
    if not rows:
        return
    d = run_dir / PARTS
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"{worker}-{os.getpid()}.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def read_rows(run_dir: Path) -> list[dict]:
    rows = []
    for part in sorted((run_dir / PARTS).glob("*.jsonl")):
        rows += [json.loads(line) for line in part.read_text().splitlines() if line.strip()]
    return rows


# -- a model's own calls ------------------------------------------------------------------


def model_calls(model: str, device: str, dtype: str, observer) -> None:
    """A prefill of PROBE_PROMPT tokens and one cached decode step of the checkpoint, every
    op call describe-only (told to `observer`): the shapes the model asks the build for.
    The weights are the checkpoint's shapes, uploaded as zeros: nothing is read from its
    weight files and nothing is computed with them."""
    import numpy as np

    from infinilm_models.models.llama.configuration import LlamaConfig
    from infinilm_models.models.llama.modeling_llama import (
        LlamaForCausalLM,
        resolve_dtype,
        upload_weights,
    )
    from infinilm_models.runtime import Device
    from infinilm_models.runtime.ops import describe_only

    from .model.harness import resolve_model

    path = resolve_model(model)
    config = LlamaConfig.from_pretrained(path)
    dt = resolve_dtype(config, dtype)
    dev = Device.parse(device)
    # zeros already in the dtype: no conversion pass over the weights
    host = {name: np.zeros(shape, dt.numpy)
            for name, shape in config.expected_weight_shapes().items()}
    if config.tie_word_embeddings:
        host.pop("lm_head.weight", None)
    weights = upload_weights(host, dev, dt)
    weights.setdefault("lm_head.weight", weights["model.embed_tokens.weight"])
    ours = LlamaForCausalLM(config, weights, dev, dt)  # fusion plan first: it computes
    ids = (np.arange(PROBE_PROMPT) % config.vocab_size).reshape(1, -1)
    with describe_only(observer):
        cache = ours.new_cache(1, PROBE_PROMPT + 2)
        ours.forward(ids, cache=cache)
        ours.forward(ids[:, :1], cache=cache)


def probe_model(model: str, device: str, dtypes: Iterable[str]) -> list[dict]:
    """Rows of the model's forward in every dtype; a model that cannot be probed (a broken
    checkpoint, a dtype the build cannot hold) is one row saying why."""
    from infinilm_models.runtime import InfiniError

    rows = []
    for dtype in dtypes:
        probe = Probe(source=model)
        try:
            model_calls(model, device, dtype, probe.observe)
        except InfiniError:
            pass  # the refused call is the probe's last row; the forward stops there
        except Exception as e:  # noqa: BLE001 - one line in the matrix, never a dead run
            probe.rows.append({"op": "(model)", "dtype": dtype, "signature": "",
                               "state": "refused", "source": model,
                               "status": f"{type(e).__name__}: {str(e)[:300]}"})
        rows += probe.rows
    return rows


# -- the matrix ---------------------------------------------------------------------------


def matrix(rows: list[dict], records: list[CheckRecord], exported: list[str] | None,
           dtypes: list[str], seconds: float, models: list[str]) -> SupportMatrix:
    """Cells per (source, op, dtype) over distinct signatures; every op of specs.py the
    build does not export gets a not_exported cell per dtype; a crashed check's op and
    dtype are crashed (its process died creating the descriptor)."""
    from infinilm_models.runtime.ops.specs import BY_NAME, SPECS

    cells: dict[tuple[str, str, str], dict[str, str]] = {}
    for r in rows:
        seen = cells.setdefault((r["source"], r["op"], r["dtype"]), {})
        # a signature refused once is refused (descriptor creation is deterministic)
        if seen.get(r["signature"], "supported") == "supported":
            seen[r["signature"]] = r["state"] if r["state"] == "supported" else \
                f"{r['state']}:{r['status']}"
    out: dict[tuple[str, str, str], SupportCell] = {}
    for (source, op, dtype), sigs in cells.items():
        refused = {s: v for s, v in sigs.items() if v != "supported"}
        statuses = sorted({v.split(":", 1)[1] for v in refused.values()})
        if any(v.startswith("not_exported") for v in refused.values()):
            state = "not_exported"
        else:
            state = ("supported" if not refused else
                     "refused" if len(refused) == len(sigs) else "partial")
        out[(source, op, dtype)] = SupportCell(
            op=op, dtype=dtype, state=state, cases=len(sigs), refused=len(refused),
            statuses=statuses, example=next(iter(refused), ""), source=source)
    for r in records:
        if r.status == "crashed" and r.op and r.dtype:
            cell = out.setdefault(("checks", r.op, r.dtype),
                                  SupportCell(op=r.op, dtype=r.dtype, state="crashed"))
            cell.state = "crashed"
            cell.example = cell.example or r.nodeid
    if exported is not None:
        for s in SPECS:
            if s.name not in exported:
                for d in dtypes:
                    out.setdefault(("checks", s.py, d), SupportCell(
                        op=s.py, dtype=d, state="not_exported", statuses=["NOT_EXPORTED"]))
    order = {s.py: i for i, s in enumerate(SPECS)}
    dorder = {d: i for i, d in enumerate(dtypes)}
    ordered = sorted(out.values(), key=lambda c: (
        c.source != "checks", c.source, order.get(c.op, len(BY_NAME)), c.op,
        dorder.get(c.dtype, len(dorder)), c.dtype))
    return SupportMatrix(cells=ordered, descriptors=sum(len(s) for s in cells.values()),
                         seconds=round(seconds, 2), models=list(models))


def tables(m: SupportMatrix) -> list[tuple[str, list[str], list[tuple[str, dict]]]]:
    """(source, dtype columns, [(op, {dtype: cell})]) per source: the checks first."""
    out = []
    for source in dict.fromkeys(c.source for c in m.cells):
        cells = [c for c in m.cells if c.source == source]
        dtypes = list(dict.fromkeys(c.dtype for c in cells))
        rows: dict[str, dict] = {}
        for c in cells:
            rows.setdefault(c.op, {})[c.dtype] = c
        out.append((source, dtypes, list(rows.items())))
    return out


def cell_text(c: SupportCell | None, marks: bool = True) -> str:
    if c is None:
        return ""
    mark = f"{MARKS[c.state]} " if marks else ""
    if c.state == "supported":
        return f"{mark}{c.cases}"
    if c.state == "partial":
        return f"{mark}{c.refused}/{c.cases} refused ({', '.join(c.statuses)})"
    if c.state == "refused":
        return f"{mark}{', '.join(s.split(' (')[0] for s in c.statuses)}"
    if c.state == "not_exported":
        return f"{mark}not exported"
    return f"{mark}crashed"


def source_title(source: str) -> str:
    return ("the op checks' cases" if source == "checks" else
            f"model {source}: the calls of a prefill and a cached decode step")


def console_lines(m: SupportMatrix) -> list[str]:
    lines = [f"support probe: {m.descriptors} distinct descriptor signatures in {m.seconds:.1f} "
             "s (created, nothing computed); cells: accepted signatures, or refused/total "
             "with the status"]
    for source, dtypes, rows in tables(m):
        width = max([len(op) for op, _ in rows] + [4])
        lines.append(f"  {source_title(source)}")
        lines.append(f"  {'op':<{width}}  " + "  ".join(f"{d:<30}" for d in dtypes))
        for op, by in rows:
            lines.append(f"  {op:<{width}}  " + "  ".join(
                f"{cell_text(by.get(d), marks=False) or '-':<30}" for d in dtypes))
    return lines


def markdown(m: SupportMatrix, build: str, device: str, command: str, when: str) -> str:
    """The table a vendor pastes into their docs (llama.cpp's docs/ops.md)."""
    out = [f"# InfiniCore op support: {build} on {device}", "",
           f"Probed {when} with `{command}`: {m.descriptors} distinct descriptor "
           f"signatures in {m.seconds:.1f} s. A descriptor was created for each case (and "
           "its workspace size asked); nothing was computed, so this says what the build "
           "accepts, not whether it computes right (the op checks decide that).", "",
           "✅ every case accepted (how many) · 🟡 some refused (refused/total, status) · "
           "❌ every case refused (status) · ➖ not exported by this build · 💥 the process "
           "died creating a descriptor · blank: no case of that dtype.", ""]
    for source, dtypes, rows in tables(m):
        out += [f"## {source_title(source)}", "", "| op | " + " | ".join(dtypes) + " |",
                "| --- |" + " --- |" * len(dtypes)]
        out += [f"| {op} | " + " | ".join(cell_text(by.get(d)) for d in dtypes) + " |"
                for op, by in rows]
        out.append("")
    refused = [c for c in m.cells if c.state in ("partial", "refused") and c.example]
    if refused:
        out += ["## Refused cases (one example each)", ""]
        out += [f"* {c.op} {c.dtype} ({c.source}): {', '.join(c.statuses)}: `{c.example}`"
                for c in refused]
        out.append("")
    return "\n".join(out)
