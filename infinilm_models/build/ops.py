"""Which operators a build compiles: the tree's op folders, the `--ops` request, and
leaving an op out (its absence makes the suite record it `unsupported`)."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import BuildError
from .source import Source

# The op directories (src/infiniop/ops/<name>) whose operators this project binds: the
# model's ops and the LLaMA-path ops the suite checks (`--ops harness`).
HARNESS_OPS = (
    "gemm", "rms_norm", "rope", "causal_softmax", "swiglu", "add", "mul", "rearrange",
    "random_sample", "attention", "add_rms_norm", "embedding", "silu", "silu_and_mul",
    "topk", "kv_caching", "paged_caching", "paged_attention", "paged_attention_prefill",
)
OPS_CHOICES = ("auto", "all", "harness")
_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def check_ops(ops: str) -> str:
    if ops in OPS_CHOICES or re.fullmatch(r"[a-z0-9_]+(,[a-z0-9_]+)*", ops):
        return ops
    raise BuildError(f"--ops {ops!r}: expected auto, all, harness or a comma-separated list "
                     "of op directories (src/infiniop/ops/<name>), e.g. gemm,rms_norm")


def op_dirs(src: Path) -> dict[str, Path]:
    """name -> folder of every operator in the tree (a folder of src/infiniop/ops holding
    an operator.cc; groups such as quant/ hold several, named quant/<op>)."""
    root = src / "src" / "infiniop" / "ops"
    return {p.parent.relative_to(root).as_posix(): p.parent
            for p in sorted(root.glob("**/operator.cc"))}


def cudnn_use(folder: Path) -> str | None:
    """How an op's NVIDIA sources use cuDNN: None, "optional" (behind ENABLE_CUDNN_API,
    the --cudnn option's define) or "required" (called unconditionally)."""
    texts = [_COMMENTS.sub("", p.read_text(errors="replace"))
             for p in sorted((folder / "nvidia").glob("*.cu*")) if p.is_file()]
    code = "\n".join(texts)
    if not re.search(r"\bcudnn\w*", code, re.I):
        return None
    return "optional" if "ENABLE_CUDNN_API" in code else "required"


def select_ops(available: dict[str, Path], ops: str, backend: str,
               source: Source) -> tuple[list[str], dict[str, str]]:
    """(ops to build, {op left out: why}) for the request `ops`."""
    if ops == "auto":
        ops = "harness" if backend == "nvidia" and source.kind != "pypi" else "all"
    if ops == "all":
        return sorted(available), {}
    wanted = HARNESS_OPS if ops == "harness" else tuple(ops.split(","))
    unknown = sorted(set(wanted) - set(available))
    if ops != "harness" and unknown:
        raise BuildError(f"--ops: no such op in {source.label}: {', '.join(unknown)} (ops: "
                         f"{', '.join(sorted(available))})")
    why = ("not used by the harness (--ops harness"
           + (", the default for NVIDIA builds of trees other than the PyPI release: "
              "upstream's full NVIDIA op set does not compile under CUDA 13)"
              if backend == "nvidia" else ")") if ops == "harness" else "not in --ops")
    chosen = sorted(o for o in available if o in wanted)
    return chosen, {o: why for o in sorted(available) if o not in wanted}


def leave_out(folder: Path) -> int:
    """Remove an op's compiled sources (operator.cc and its backends' .cc/.cu/.cpp/.c),
    keeping its headers, which other ops may include. Returns how many files went."""
    n = 0
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in (".cc", ".cu", ".cpp", ".c"):
            p.unlink()
            n += 1
    return n
