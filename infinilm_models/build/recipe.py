"""The recipe: what the tree in hand needs to build a backend (configure flags, edits,
ops), and the digest of a request that says when an installed build is stale."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import vendor
from .backends import (
    BackendOption,
    backend_option,
    check_xmake_options,
    request_flags,
)
from .ops import HARNESS_OPS, cudnn_use, leave_out, op_dirs, select_ops
from .patches import PATCHES, apply_patches, set_cuda_arch, stub_generated_headers, stub_requires
from .prefix import INFINICORE_VERSION
from .source import Source
from .vendor import COMMON_FLAGS, CUDNN_DISTRIBUTIONS, VendorLib, link_flags

# Bump when the recipe (flags, patches, repo definitions) changes, to invalidate stamps.
RECIPE_VERSION = 4
# Targets of xmake.lua that make up the C API (not the pybind11 module).
C_API_TARGETS = ("infinirt", "infiniop", "infiniccl")
XMAKE_REPO = Path(__file__).resolve().parent / "xmake_repo"


def pypi_source_key() -> str:
    return f"pypi:{INFINICORE_VERSION}"


@dataclass
class Recipe:
    """What the tree in hand needs: configure flags, environment, and every adaptation
    as a line (printed, and recorded in the stamp)."""

    flags: list[str]
    adaptations: list[str]
    ops_built: list[str]
    ops_left_out: dict[str, str]
    cudnn: VendorLib | None = None
    backend: BackendOption | None = None
    xmake_options: list[str] = field(default_factory=list)


def plan_recipe(src: Path, source: Source, backend: str, cuda_arch: str, ccl: bool,
                ops: str, nccl: VendorLib | None, cudnn: VendorLib | None, *,
                xmake_options: tuple[tuple[str, str], ...] = (),
                write: bool = True) -> Recipe:
    """The recipe for `src` (a private copy: it is edited unless `write` is False, which
    only says what would be done, as `--print-config` does)."""
    option = backend_option(src, backend, source.label)
    check_xmake_options(src, xmake_options, source.label)
    adaptations = stub_requires(src)
    # The literal patches were written for the PyPI release: there, missing text is drift.
    adaptations += apply_patches(src, backend, strict=source.key == pypi_source_key(),
                                 write=write)
    if option.note():
        adaptations.append(option.note())
    flags = option.flags()
    if backend == "nvidia" and cuda_arch != "native":
        flag, line = set_cuda_arch(src, cuda_arch, write=write)
        adaptations.append(line)
        if flag:
            flags.append(flag)
    available = op_dirs(src)
    built, left_out = select_ops(available, ops, backend, source)
    use_cudnn = None
    if backend == "nvidia":
        uses = {o: cudnn_use(available[o]) for o in built}
        needing = sorted(o for o, u in uses.items() if u)
        if needing and cudnn is not None:
            use_cudnn = cudnn
            adaptations.append(f"cuDNN from {cudnn.source} for {', '.join(needing)}")
        else:
            required = sorted(o for o, u in uses.items() if u == "required")
            for o in required:
                left_out[o] = ("needs cuDNN (calls it unconditionally): install "
                               f"{CUDNN_DISTRIBUTIONS[0]} or set CUDNN_ROOT to build it")
            built = [o for o in built if o not in required]
        flags.append("--cudnn=y" if use_cudnn else "--cudnn=n")
    if write:
        for o in sorted(left_out):
            leave_out(available[o])
    if left_out:
        adaptations.append(f"ops left out: {len(left_out)} of {len(available)} (the stamp's "
                           "ops.left_out names each, with why)")
    adaptations += stub_generated_headers(src, left_out, write=write)
    if ccl:
        flags.append("--ccl=y")
    # The user's options come last and replace the recipe's own for the same key (omp=n).
    keys = {f"--{key}=" for key, _ in xmake_options}
    flags = [f for f in flags if not any(f.startswith(k) for k in keys)]
    chosen = [f"{key}={value}" for key, value in xmake_options]
    flags += [f"--{o}" for o in chosen]
    flags += link_flags(nccl, use_cudnn)
    return Recipe(flags=flags, adaptations=adaptations, ops_built=built,
                  ops_left_out=left_out, cudnn=use_cudnn, backend=option,
                  xmake_options=chosen)


def recipe_digest(backend: str, cuda_arch: str = "native", ccl: bool = False,
                  source_key: str | None = None, ops: str = "auto",
                  cudnn: str | None = None,
                  xmake_options: tuple[tuple[str, str], ...] = ()) -> str:
    """What decides the build's contents, hashed: a stamp with another digest is stale.
    `cudnn`: where cuDNN came from, for sources other than the PyPI release (whose ops do
    not use it). The tree decides the rest: its identity is `source_key`."""
    h = hashlib.sha256()
    parts: list = [RECIPE_VERSION, request_flags(backend), COMMON_FLAGS, C_API_TARGETS]
    if backend == "nvidia" and cuda_arch != "native":
        parts.append(cuda_arch)
    if ccl:  # only when on: stamps of builds without InfiniCCL keep their digest
        parts.append("ccl")
    key = source_key or pypi_source_key()
    if key != pypi_source_key():
        parts += [key, ops, HARNESS_OPS if ops in ("auto", "harness") else None, cudnn]
    elif ops not in ("auto", "all"):
        parts.append(ops)
    if xmake_options:  # only when given: earlier stamps keep their digest
        parts.append(["xmake-options", [f"{k}={v}" for k, v in xmake_options]])
    h.update(json.dumps(parts).encode())
    for p in sorted(XMAKE_REPO.rglob("*.lua")):
        h.update(p.read_bytes())
    for patch in PATCHES:
        if backend in patch.backends:
            h.update(repr(patch).encode())
    return h.hexdigest()[:16]


def cudnn_key(source_key: str | None, backend: str) -> str | None:
    if backend != "nvidia" or (source_key or pypi_source_key()) == pypi_source_key():
        return None
    found = vendor.find_cudnn()
    return found.source if found else "absent"
