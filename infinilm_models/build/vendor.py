"""Vendor libraries a build links against (NCCL for InfiniCCL, cuDNN), found from their
pip packages or $<LIB>_ROOT, and the RUNPATH that lets the built libraries find them."""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError

# InfiniCore 0.1.0 links libinfiniop.so against libinfinirt.so without RUNPATH, and
# libinfinirt.so has no SONAME, so preloading it by path does not satisfy the dependency:
# without LD_LIBRARY_PATH the loader cannot find it. $ORIGIN makes the prefix relocatable.
COMMON_FLAGS = ["--shflags=-Wl,-rpath,$ORIGIN"]
# InfiniCCL (xmake option --ccl=y, the ENABLE_CCL define): the backends whose collective
# library we know how to provide. NVIDIA: NCCL, found through NCCL_ROOT (xmake/nvidia.lua:
# $NCCL_ROOT/include and $NCCL_ROOT/lib/libnccl.so). InfiniCCL has no CPU backend at all.
CCL_BACKENDS = ("nvidia",)
# The pip packages, newest CUDA first; any NCCL 2 / cuDNN 9 links (stable ABIs).
NCCL_DISTRIBUTIONS = ("nvidia-nccl-cu13", "nvidia-nccl-cu12")
CUDNN_DISTRIBUTIONS = ("nvidia-cudnn-cu13", "nvidia-cudnn-cu12")


@dataclass(frozen=True)
class VendorLib:
    """Where a vendor library is: the folder holding its header, the shared library, and
    where it came from."""

    include: Path
    library: Path
    source: str

    def describe(self) -> dict[str, str]:
        return {"include": str(self.include), "library": str(self.library),
                "source": self.source}


Nccl = VendorLib  # the name earlier releases exported


def _find_vendor_lib(env_var: str, header: str, unversioned: str, versioned: re.Pattern,
                     distributions: tuple[str, ...], layout: tuple[str, str],
                     search_path: list[str] | None,
                     environ: dict[str, str] | None) -> VendorLib | None:
    """$`env_var` if set (include/<header> and lib/<unversioned>, xmake's convention),
    else the first installed pip package of `distributions`, found from its file list
    with importlib.metadata (nothing is imported); None when neither is there."""
    env = os.environ if environ is None else environ
    root = env.get(env_var)
    if root:
        inc, lib = Path(root) / "include", Path(root) / "lib" / unversioned
        if not (inc / header).is_file() or not lib.is_file():
            raise BuildError(f"{env_var}={root} lacks include/{header} or lib/{unversioned}; "
                             f"unset it to use the pip package {distributions[0]}")
        return VendorLib(inc, lib.resolve(), f"{env_var}={root}")
    for name in distributions:
        dist = next(iter(importlib.metadata.distributions(
            name=name, **({"path": search_path} if search_path is not None else {}))), None)
        if dist is None:
            continue
        found: dict[str, Path] = {}
        for f in dist.files or ():
            if f.name == header:
                found["header"] = Path(str(dist.locate_file(f)))
            elif versioned.fullmatch(f.name) and "library" not in found:
                found["library"] = Path(str(dist.locate_file(f)))
        # Without a file list (RECORD), the layout of every release so far.
        found.setdefault("header", Path(str(dist.locate_file(layout[0]))))
        found.setdefault("library", Path(str(dist.locate_file(layout[1]))))
        hdr, lib = found["header"], found["library"]
        if hdr.is_file() and lib.is_file():
            return VendorLib(hdr.parent.resolve(), lib.resolve(), f"{name} {dist.version}")
        raise BuildError(f"{name} {dist.version} is installed but {hdr} or {lib} is "
                         "missing; reinstall it")
    return None


def find_nccl(search_path: list[str] | None = None,
              environ: dict[str, str] | None = None) -> VendorLib:
    """NCCL for an InfiniCCL build on NVIDIA: $NCCL_ROOT, else the pip package
    nvidia-nccl-cu13 or -cu12 of this environment (`search_path`: where to look instead
    of sys.path)."""
    found = _find_vendor_lib("NCCL_ROOT", "nccl.h", "libnccl.so",
                             re.compile(r"libnccl\.so\.2"), NCCL_DISTRIBUTIONS,
                             ("nvidia/nccl/include/nccl.h", "nvidia/nccl/lib/libnccl.so.2"),
                             search_path, environ)
    if found is None:
        raise BuildError(
            "--ccl on nvidia needs NCCL: install the pip package into this environment ("
            + sys.executable + "): pip install nvidia-nccl-cu13 (CUDA 13) or nvidia-nccl-cu12 "
            "(CUDA 12); or set NCCL_ROOT to a folder with include/nccl.h and lib/libnccl.so")
    return found


def find_cudnn(search_path: list[str] | None = None,
               environ: dict[str, str] | None = None) -> VendorLib | None:
    """cuDNN: $CUDNN_ROOT, else the pip package nvidia-cudnn-cu13 or -cu12; None if
    neither (then the ops that need it are left out of the build, by name)."""
    return _find_vendor_lib("CUDNN_ROOT", "cudnn.h", "libcudnn.so",
                            re.compile(r"libcudnn\.so\.\d+"), CUDNN_DISTRIBUTIONS,
                            ("nvidia/cudnn/include/cudnn.h", "nvidia/cudnn/lib/libcudnn.so.9"),
                            search_path, environ)


def vendor_root(lib: VendorLib, dest: Path, unversioned: str) -> Path:
    """A scratch <LIB>_ROOT in xmake's layout: include -> the package's include folder,
    lib/<unversioned> -> its versioned library (pip packages ship no unversioned name)."""
    (dest / "lib").mkdir(parents=True, exist_ok=True)
    for link, target in ((dest / "include", lib.include),
                         (dest / "lib" / unversioned, lib.library)):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return dest


def nccl_root(nccl: VendorLib, dest: Path) -> Path:
    return vendor_root(nccl, dest, "libnccl.so")


def link_flags(*libs: VendorLib | None) -> list[str]:
    """COMMON_FLAGS, with each vendor library's folder on the RUNPATH too: a pip
    package's folder is on no default search path (torch finds it through its own
    RUNPATH; this project imports no torch)."""
    dirs = []
    for lib in libs:
        if lib is None:
            continue
        libdir = str(lib.library.parent)
        if any(c in libdir for c in ": \t\n$,"):
            raise BuildError(f"library folder {libdir!r}: a character that cannot go on a "
                             "RUNPATH")
        if libdir not in dirs:
            dirs.append(libdir)
    if not dirs:
        return list(COMMON_FLAGS)
    return [COMMON_FLAGS[0] + "".join(":" + d for d in dirs)]


def check_ccl(backend: str, ccl: bool) -> None:
    if not ccl or backend in CCL_BACKENDS:
        return
    if backend == "cpu":
        raise BuildError(
            "--ccl: InfiniCCL has no cpu backend. Ranks sharing the CPU use "
            "infinilm_models.runtime.comm.LoopbackCommunicator, which needs no InfiniCCL.")
    raise BuildError(
        f"--ccl: this recipe provides InfiniCCL's collective library only for "
        f"{', '.join(CCL_BACKENDS)} (NCCL); for {backend}, InfiniCore links the vendor's own "
        "(see the tree's xmake/ files): build it with InfiniCore's own `xmake f --ccl=y` and "
        "set INFINI_ROOT to that install")
