"""The recipe's edits to a source tree: literal source fixes, the CUDA arch, and the
stand-ins that keep xmake offline. Each returns the line that says what it did (printed,
and recorded in the stamp); with `write=False` it only says what it would do."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError


@dataclass(frozen=True)
class Patch:
    """A literal source fix, applied only where the backend needs it."""

    path: str
    backends: tuple[str, ...]
    replacements: tuple[tuple[str, str], ...]
    why: str
    prepend: str = ""


# CUDA 13's CUB removed the cub::Max/cub::Min functors; CCCL's cuda::maximum/minimum
# (in <cuda/functional>, shipped since CUDA 12) replace them one for one.
_CUB_FUNCTORS = (("cub::Max()", "cuda::maximum<>()"), ("cub::Min()", "cuda::minimum<>()"))
PATCHES = tuple(
    Patch(path=path, backends=("nvidia",), replacements=_CUB_FUNCTORS,
          why="cub::Max/cub::Min -> cuda::maximum/minimum (removed in CUDA 13's CUB)",
          prepend="#include <cuda/functional>\n")
    for path in (
        "src/infiniop/ops/random_sample/nvidia/random_sample_kernel.cuh",
        "src/infiniop/reduce/cuda/reduce.cuh",
    )
)
_CUDA_ARCH = re.compile(r"native|(sm|compute)_\d+a?")


def check_cuda_arch(arch: str) -> str:
    if not _CUDA_ARCH.fullmatch(arch):
        raise BuildError(f"--cuda-arch {arch!r}: expected 'native' or a code such as sm_90")
    return arch


def set_cuda_arch(src: Path, arch: str, write: bool = True) -> tuple[str | None, str]:
    """Compile device code for `arch` the way the tree expects: (an xmake configure flag
    or None, the line that says what was done).

    "native" asks the GPU at configure time; where that probe fails (a build box without
    the card, some sandboxes) nvcc falls back to PTX alone, and every fresh process then
    spends about a minute JIT-compiling kernels before its first op.
    """
    target = src / "xmake" / "nvidia.lua"
    text = target.read_text() if target.is_file() else ""
    old = 'add_cugencodes("native")'
    if old in text:  # InfiniCore 0.1.0: native hard-coded
        if write:
            target.write_text(text.replace(old, f'add_cugencodes("{arch}")'))
        return None, f"xmake/nvidia.lua: CUDA code for {arch} instead of native detection"
    if re.search(r'option\("cuda_arch"\)', (src / "xmake.lua").read_text()):
        return f"--cuda_arch={arch}", f"xmake f --cuda_arch={arch} (the tree's own option)"
    raise BuildError(f"--cuda-arch {arch}: this tree has neither {old} in xmake/nvidia.lua "
                     "nor a cuda_arch option in xmake.lua; build with --cuda-arch native")


def apply_patches(src: Path, backend: str, strict: bool = True,
                  write: bool = True) -> list[str]:
    """The literal fixes of PATCHES for `backend`. `strict` (the PyPI release, which they
    were written for): a patch whose text is gone is an error; for other trees it is
    reported as not needed."""
    applied = []
    for patch in PATCHES:
        if backend not in patch.backends:
            continue
        target = src / patch.path
        raw = target.read_bytes() if target.is_file() else b""
        # The file starts with a UTF-8 BOM; keep it byte-for-byte.
        bom = raw.startswith(b"\xef\xbb\xbf")
        text = raw.decode("utf-8-sig")
        if not any(old in text for old, _ in patch.replacements):
            if strict:
                raise BuildError(f"patch for {patch.path}: nothing to replace (sdist changed?)")
            applied.append(f"{patch.path}: not needed here ({patch.why}: text absent)")
            continue
        text = patch.prepend + text
        for old, new in patch.replacements:
            text = text.replace(old, new)
        if write:
            target.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
        applied.append(f"{patch.path}: {patch.why}")
    return applied


def stub_requires(src: Path) -> list[str]:
    """Global `add_requires` that our offline repository answers with an empty stand-in
    (they are used only by targets we do not build): say so for each one the tree has."""
    text = (src / "xmake.lua").read_text()
    stubs = {"boost": "boost (xmake.lua requires it for the C++ API's stack traces; no C "
                      "API target uses it): empty stand-in from xmake_repo",
             "pybind11": "pybind11 (the Python module only): taken from this Python or "
                         "empty, from xmake_repo"}
    return [f"xmake.lua add_requires {why}" for name, why in stubs.items()
            if re.search(rf'add_requires\("{name}"', text)]


def stub_generated_headers(src: Path, left_out: dict[str, str],
                           write: bool = True) -> list[str]:
    """Upstream's xmake/nvidia.lua runs a generator (Python + jinja2) for awq_marlin_gemm
    at load time and stops when its header is missing; with that op left out an empty
    header keeps the load step from running code for an op that is not built."""
    out = []
    header = src / "src/infiniop/ops/awq_marlin_gemm/nvidia/kernel_selector.h"
    lua = src / "xmake" / "nvidia.lua"
    if "awq_marlin_gemm" in left_out and lua.is_file() and \
            "kernel_selector.h" in lua.read_text() and not header.exists():
        if write:
            header.write_text("// awq_marlin_gemm is left out of this build "
                              "(infinilm-models recipe)\n")
        out.append(f"{header.relative_to(src)}: empty (awq_marlin_gemm left out, its kernel "
                   "generator not run)")
    return out
