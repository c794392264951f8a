"""Build InfiniCore's C libraries from any source, offline, into a prefix.

    python -m infinilm_models.runtime.build --backend cpu             # PyPI sdist 0.1.0
    python -m infinilm_models.runtime.build --backend nvidia --ccl    # with InfiniCCL (NCCL)
    python -m infinilm_models.runtime.build --source ~/InfiniCore     # a tree or a tarball
    python -m infinilm_models.runtime.build --source T -- pytest ...  # then run with it

The default source is the PyPI sdist (`infinicore` 0.1.0); `--source` takes a source
directory or a tarball of one, whatever its top directory (source.py identifies it).
The recipe adapts to the tree in hand, and every adaptation is printed and recorded in
the stamp:

* xmake resolves `add_requires(...)` by cloning package repositories; we point it at a
  small local repository (``xmake_repo/``) whose packages fetch from the system or, for
  what the C API targets never use (pybind11, upstream's boost), resolve to nothing, and
  set ``--network=private``.
* A private ``XMAKE_GLOBALDIR`` per build keeps runs from leaking into each other.
* Literal source fixes (CUDA 13's CUB) apply where their text is present.
* The CUDA arch is set the way the tree expects: 0.1.0 hard-codes
  ``add_cugencodes("native")`` (patched), later trees take ``xmake f --cuda_arch=``.
* cuDNN comes from the pip package ``nvidia-cudnn-cu13`` (or ``$CUDNN_ROOT``) when an op
  being built uses it; without it, ops that need it unconditionally are left out, named.
* ``--ops`` builds a subset: ``harness`` is the ops this project binds (upstream's full
  NVIDIA op set does not compile under CUDA 13, in a quantized gemm LLaMA never calls).
  Ops left out are absent from the build, so the suite records them `unsupported`.

The build is idempotent: a stamp in the prefix records what was built; an identical
request returns at once. Installation goes to a temporary prefix renamed into place, so
an interrupted build never leaves a half-installed prefix behind.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .source import Source, SourceError, is_tarball, resolve, sha256_file

INFINICORE_VERSION = "0.1.0"  # the PyPI release: the default source
STAMP_NAME = ".infinilm-build.json"
# Bump when the recipe (flags, patches, repo definitions) changes, to invalidate stamps.
RECIPE_VERSION = 4
LIBRARIES = ("libinfinirt.so", "libinfiniop.so", "libinfiniccl.so")
# Targets of xmake.lua that make up the C API (not the pybind11 module).
C_API_TARGETS = ("infinirt", "infiniop", "infiniccl")

BACKEND_FLAGS: dict[str, list[str]] = {
    "cpu": ["--cpu=y", "--omp=y"],
    "nvidia": ["--cpu=y", "--omp=y", "--nv-gpu=y"],
}
# InfiniCore 0.1.0 links libinfiniop.so against libinfinirt.so without RUNPATH, and
# libinfinirt.so has no SONAME, so preloading it by path does not satisfy the dependency:
# without LD_LIBRARY_PATH the loader cannot find it. $ORIGIN makes the prefix relocatable.
COMMON_FLAGS = ["--shflags=-Wl,-rpath,$ORIGIN"]
BACKEND_TOOLS: dict[str, list[str]] = {"cpu": ["c++"], "nvidia": ["c++", "nvcc"]}
# InfiniCCL (xmake option --ccl=y, the ENABLE_CCL define): the backends whose collective
# library we know how to provide. NVIDIA: NCCL, found through NCCL_ROOT (xmake/nvidia.lua:
# $NCCL_ROOT/include and $NCCL_ROOT/lib/libnccl.so). InfiniCCL has no CPU backend at all.
CCL_BACKENDS = ("nvidia",)
# The pip packages, newest CUDA first; any NCCL 2 / cuDNN 9 links (stable ABIs).
NCCL_DISTRIBUTIONS = ("nvidia-nccl-cu13", "nvidia-nccl-cu12")
CUDNN_DISTRIBUTIONS = ("nvidia-cudnn-cu13", "nvidia-cudnn-cu12")

# The op directories (src/infiniop/ops/<name>) whose operators this project binds: the
# model's ops and the LLaMA-path ops the suite checks (`--ops harness`).
HARNESS_OPS = (
    "gemm", "rms_norm", "rope", "causal_softmax", "swiglu", "add", "mul", "rearrange",
    "random_sample", "attention", "add_rms_norm", "embedding", "silu", "silu_and_mul",
    "topk", "kv_caching", "paged_caching", "paged_attention", "paged_attention_prefill",
)
OPS_CHOICES = ("auto", "all", "harness")

_HERE = Path(__file__).resolve().parent


class BuildError(RuntimeError):
    """A build step failed; the message says which and how to fix it."""


def cache_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "infinilm-models"


def default_prefix(backend: str, source: Source | None = None) -> Path:
    """Where `build` installs by default and where library discovery looks second: one
    prefix per source identity and backend (0.1.0 keeps its name of earlier releases)."""
    slug = source.slug if source is not None else INFINICORE_VERSION
    return cache_home() / f"infinicore-{slug}-{backend}"


def pypi_source_key() -> str:
    return f"pypi:{INFINICORE_VERSION}"


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


def _log(msg: str) -> None:
    print(f"[infinicore-build] {msg}", flush=True)


_CUDA_ARCH = re.compile(r"native|(sm|compute)_\d+a?")


def check_cuda_arch(arch: str) -> str:
    if not _CUDA_ARCH.fullmatch(arch):
        raise BuildError(f"--cuda-arch {arch!r}: expected 'native' or a code such as sm_90")
    return arch


def check_ops(ops: str) -> str:
    if ops in OPS_CHOICES or re.fullmatch(r"[a-z0-9_]+(,[a-z0-9_]+)*", ops):
        return ops
    raise BuildError(f"--ops {ops!r}: expected auto, all, harness or a comma-separated list "
                     "of op directories (src/infiniop/ops/<name>), e.g. gemm,rms_norm")


def _recipe_digest(backend: str, cuda_arch: str = "native", ccl: bool = False,
                   source_key: str | None = None, ops: str = "auto",
                   cudnn: str | None = None) -> str:
    """What decides the build's contents, hashed: a stamp with another digest is stale.
    `cudnn`: where cuDNN came from, for sources other than the PyPI release (whose ops do
    not use it)."""
    h = hashlib.sha256()
    parts: list = [RECIPE_VERSION, BACKEND_FLAGS[backend], COMMON_FLAGS, C_API_TARGETS]
    if backend == "nvidia" and cuda_arch != "native":
        parts.append(cuda_arch)
    if ccl:  # only when on: stamps of builds without InfiniCCL keep their digest
        parts.append("ccl")
    key = source_key or pypi_source_key()
    if key != pypi_source_key():
        parts += [key, ops, HARNESS_OPS if ops in ("auto", "harness") else None, cudnn]
    elif ops not in ("auto", "all"):
        parts.append(ops)
    h.update(json.dumps(parts).encode())
    for p in sorted((_HERE / "xmake_repo").rglob("*.lua")):
        h.update(p.read_bytes())
    for patch in PATCHES:
        if backend in patch.backends:
            h.update(repr(patch).encode())
    return h.hexdigest()[:16]


def find_xmake() -> str:
    """xmake from PATH, else next to this interpreter (pip's `xmake-wheel` puts it there)."""
    found = shutil.which("xmake") or shutil.which("xmake", path=str(Path(sys.executable).parent))
    if not found:
        raise BuildError(
            "xmake not found on PATH nor next to " + sys.executable
            + ". Install it with: pip install xmake-wheel==3.0.0"
        )
    return found


def check_tools(backend: str) -> str:
    missing = [t for t in BACKEND_TOOLS[backend] if shutil.which(t) is None]
    if missing:
        hint = {"c++": "apt-get install g++",
                "nvcc": "install the CUDA toolkit and put nvcc on PATH"}
        raise BuildError(
            f"backend {backend!r} needs {', '.join(missing)} on PATH: "
            + "; ".join(hint.get(t, t) for t in missing)
        )
    return find_xmake()


# -- vendor libraries from pip packages (NCCL, cuDNN) ------------------------------------


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


def _find_vendor_lib(what: str, env_var: str, header: str, unversioned: str,
                     versioned: re.Pattern, distributions: tuple[str, ...],
                     layout: tuple[str, str], search_path: list[str] | None,
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
    found = _find_vendor_lib("NCCL", "NCCL_ROOT", "nccl.h", "libnccl.so",
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
    return _find_vendor_lib("cuDNN", "CUDNN_ROOT", "cudnn.h", "libcudnn.so",
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
    if ccl and backend not in CCL_BACKENDS:
        raise BuildError(
            f"--ccl: InfiniCCL has no {backend} backend (InfiniCore 0.1.0 builds it for "
            "nvidia/iluvatar, ascend, cambricon, metax and moore; this recipe for "
            f"{', '.join(CCL_BACKENDS)}). Ranks sharing the CPU use "
            "infinilm_models.runtime.comm.LoopbackCommunicator, which needs no InfiniCCL.")


def fetch_sdist(dest: Path) -> Path:
    """The sdist from the package index (pip honours the user's index configuration)."""
    dest.mkdir(parents=True, exist_ok=True)
    existing = sorted(dest.glob(f"infinicore-{INFINICORE_VERSION}.tar.gz"))
    if existing:
        return existing[0]
    _log(f"downloading the infinicore=={INFINICORE_VERSION} sdist into {dest}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", f"infinicore=={INFINICORE_VERSION}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(f"infinicore-{INFINICORE_VERSION}.tar.gz"))
    if proc.returncode != 0 or not found:
        raise BuildError(
            "could not download the infinicore sdist (" + " ".join(cmd) + "):\n"
            + (proc.stderr or proc.stdout)[-2000:]
            + "\nPass --source PATH to build from a local copy or another tree."
        )
    return found[0]


# -- the recipe: what the tree in hand needs ---------------------------------------------


def op_dirs(src: Path) -> dict[str, Path]:
    """name -> folder of every operator in the tree (a folder of src/infiniop/ops holding
    an operator.cc; groups such as quant/ hold several, named quant/<op>)."""
    root = src / "src" / "infiniop" / "ops"
    return {p.parent.relative_to(root).as_posix(): p.parent
            for p in sorted(root.glob("**/operator.cc"))}


_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


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


@dataclass
class Recipe:
    """What the tree in hand needs: configure flags, environment, and every adaptation
    as a line (printed, and recorded in the stamp)."""

    flags: list[str]
    adaptations: list[str]
    ops_built: list[str]
    ops_left_out: dict[str, str]
    cudnn: VendorLib | None = None


def set_cuda_arch(src: Path, arch: str) -> tuple[str | None, str]:
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
        target.write_text(text.replace(old, f'add_cugencodes("{arch}")'))
        return None, f"xmake/nvidia.lua: CUDA code for {arch} instead of native detection"
    if re.search(r'option\("cuda_arch"\)', (src / "xmake.lua").read_text()):
        return f"--cuda_arch={arch}", f"xmake f --cuda_arch={arch} (the tree's own option)"
    raise BuildError(f"--cuda-arch {arch}: this tree has neither {old} in xmake/nvidia.lua "
                     "nor a cuda_arch option in xmake.lua; build with --cuda-arch native")


def apply_patches(src: Path, backend: str, strict: bool = True) -> list[str]:
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


def stub_generated_headers(src: Path, left_out: dict[str, str]) -> list[str]:
    """Upstream's xmake/nvidia.lua runs a generator (Python + jinja2) for awq_marlin_gemm
    at load time and stops when its header is missing; with that op left out an empty
    header keeps the load step from running code for an op that is not built."""
    out = []
    header = src / "src/infiniop/ops/awq_marlin_gemm/nvidia/kernel_selector.h"
    lua = src / "xmake" / "nvidia.lua"
    if "awq_marlin_gemm" in left_out and lua.is_file() and \
            "kernel_selector.h" in lua.read_text() and not header.exists():
        header.write_text("// awq_marlin_gemm is left out of this build "
                          "(infinilm-models recipe)\n")
        out.append(f"{header.relative_to(src)}: empty (awq_marlin_gemm left out, its kernel "
                   "generator not run)")
    return out


def plan_recipe(src: Path, source: Source, backend: str, cuda_arch: str, ccl: bool,
                ops: str, nccl: VendorLib | None, cudnn: VendorLib | None) -> Recipe:
    adaptations = stub_requires(src)
    # The literal patches were written for the PyPI release: there, missing text is drift.
    adaptations += apply_patches(src, backend, strict=source.key == pypi_source_key())
    flags = list(BACKEND_FLAGS[backend])
    if backend == "nvidia" and cuda_arch != "native":
        flag, line = set_cuda_arch(src, cuda_arch)
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
    for o in sorted(left_out):
        leave_out(available[o])
    if left_out:
        adaptations.append(f"ops left out: {len(left_out)} of {len(available)} (the stamp's "
                           "ops.left_out names each, with why)")
    adaptations += stub_generated_headers(src, left_out)
    if ccl:
        flags.append("--ccl=y")
    flags += link_flags(nccl, use_cudnn)
    return Recipe(flags=flags, adaptations=adaptations, ops_built=built,
                  ops_left_out=left_out, cudnn=use_cudnn)


_PROGRESS = re.compile(r"\[\s*(\d+)%\]")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], step: str, log: Path) -> None:
    """Run a build step, echoing xmake's percentage lines and keeping the full log."""
    _log(f"{step}: {' '.join(cmd)}")
    with open(log, "a") as logf:
        logf.write(f"\n$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        assert proc.stdout is not None
        last = -1
        tail: list[str] = []
        for line in proc.stdout:
            logf.write(line)
            plain = re.sub(r"\x1b\[[0-9;]*m", "", line.rstrip())
            tail = (tail + [plain])[-40:]
            m = _PROGRESS.search(plain)
            # One line per 10% keeps CI logs short; the full output is in the log file.
            if m and int(m.group(1)) // 10 != last:
                last = int(m.group(1)) // 10
                print(f"  {plain.strip()}", flush=True)
        rc = proc.wait()
    if rc != 0:
        raise BuildError(f"{step} failed (exit {rc}); full log: {log}\n" + "\n".join(tail))


def read_stamp(prefix: Path) -> dict | None:
    try:
        return json.loads((prefix / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def _cudnn_key(source_key: str | None, backend: str) -> str | None:
    if backend != "nvidia" or (source_key or pypi_source_key()) == pypi_source_key():
        return None
    found = find_cudnn()
    return found.source if found else "absent"


def is_up_to_date(prefix: Path, backend: str, cuda_arch: str = "native",
                  ccl: bool = False, source_key: str | None = None,
                  ops: str = "auto") -> bool:
    """The prefix holds what this request builds. A build with InfiniCCL also satisfies a
    request without (it is the same build plus the collectives), so that a plain
    `--backend nvidia` (tox, CI) does not rebuild it away; its NCCL must still be there."""
    stamp = read_stamp(prefix)
    if not stamp or stamp.get("backend") != backend:
        return False
    cudnn = _cudnn_key(source_key, backend)
    accepted = {_recipe_digest(backend, cuda_arch, ccl, source_key, ops, cudnn)}
    if not ccl:
        accepted.add(_recipe_digest(backend, cuda_arch, True, source_key, ops, cudnn))
    if stamp.get("recipe") not in accepted:
        return False
    for dep in ("nccl", "cudnn"):  # linked against these, found through the RUNPATH
        found = stamp.get(dep) or {}
        if found and not Path(found.get("library", "")).is_file():
            return False
    return all((prefix / "lib" / lib).is_file() for lib in LIBRARIES)


def _unpack(source: Source, work: Path) -> Path:
    """A private copy of the source under `work` (sources are patched; never the user's)."""
    if source.kind == "tree":
        dest = work / "src-tree"
        shutil.copytree(source.path, dest, symlinks=True,
                        ignore=shutil.ignore_patterns(".git", ".xmake", "build"))
        return dest
    with tarfile.open(source.path) as tar:
        # The data filter refuses absolute paths and links out of the tree.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(work / "src-tar", filter="data")
        else:  # pragma: no cover - Python < 3.10.12
            tar.extractall(work / "src-tar")
    return work / "src-tar" / source.top_dir if source.top_dir else work / "src-tar"


def check_loads(staging: Path) -> None:
    """dlopen every library in a fresh interpreter (RTLD_NOW, as ctypes does): an op set
    that left out something another op calls fails here, not in a user's first run."""
    code = ("import ctypes, sys\n"
            "for p in sys.argv[1:]:\n"
            "    ctypes.CDLL(p, mode=ctypes.RTLD_LOCAL)\n")
    libs = [str(staging / "lib" / lib) for lib in ("libinfinirt.so", "libinfiniop.so")]
    proc = subprocess.run([sys.executable, "-c", code, *libs], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError("the built libraries do not load: "
                         + (proc.stderr.strip().splitlines() or ["?"])[-1])


def build(backend: str, prefix: Path | None = None, *, sdist: Path | None = None,
          source: Source | Path | None = None, jobs: int | None = None,
          force: bool = False, keep_build_dir: bool = False, cuda_arch: str = "native",
          ccl: bool = False, ops: str = "auto") -> Path:
    """Build and install InfiniCore for `backend` into `prefix` (default: the source's
    default prefix); return the prefix. `source`: a tree, tarball or resolved Source
    (default: the PyPI sdist; `sdist` is the older name). `ccl`: with InfiniCCL."""
    if backend not in BACKEND_FLAGS:
        raise BuildError(f"unknown backend {backend!r}; choose from {sorted(BACKEND_FLAGS)}")
    check_cuda_arch(cuda_arch)
    check_ops(ops)
    check_ccl(backend, ccl)
    if source is None and sdist is not None:
        source = sdist
    if source is not None and not isinstance(source, Source):
        try:
            source = resolve(Path(source))
        except SourceError as e:
            raise BuildError(str(e)) from None
    source_key = source.key if source is not None else pypi_source_key()
    prefix = (prefix or default_prefix(backend, source)).resolve()
    if not force and is_up_to_date(prefix, backend, cuda_arch, ccl, source_key, ops):
        with_ccl = " with InfiniCCL" if (read_stamp(prefix) or {}).get("ccl") else ""
        _log(f"up to date: {prefix} (backend {backend}{with_ccl}); use --force to rebuild")
        return prefix
    nccl = find_nccl() if ccl else None
    if nccl is not None:
        _log(f"InfiniCCL with NCCL from {nccl.source}: {nccl.library}")
    cudnn = find_cudnn() if backend == "nvidia" else None
    xmake = check_tools(backend)
    started = time.monotonic()
    if source is None:
        source = resolve(fetch_sdist(cache_home() / "sdist"))
    _log(f"source: {source.label} [{source.key}]")

    prefix.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"infinicore-build-{backend}-"))
    log = work / "build.log"
    staging = prefix.with_name(prefix.name + f".tmp-{os.getpid()}")
    try:
        _log(f"[1/5] unpacking {source.path.name}")
        src = _unpack(source, work)
        _log("[2/5] adapting the recipe to the tree")
        recipe = plan_recipe(src, source, backend, cuda_arch, ccl, ops, nccl, cudnn)
        for line in recipe.adaptations:
            _log(f"  {line}")
        by_reason: dict[str, list[str]] = {}
        for op, why in sorted(recipe.ops_left_out.items()):
            by_reason.setdefault(why, []).append(op)
        for why, names in by_reason.items():
            _log(f"  left out, {why}: {', '.join(names)}")

        env = dict(os.environ)
        env.update(
            XMAKE_GLOBALDIR=str(work / "xmake-global"),
            INFINI_ROOT=str(staging),
            XMAKE_ROOT="y",  # xmake refuses to run as root (CI and containers) without it
        )
        env.pop("XMAKE_CONFIGDIR", None)
        if nccl is not None:
            env["NCCL_ROOT"] = str(nccl_root(nccl, work / "nccl-root"))
        if recipe.cudnn is not None:
            env["CUDNN_ROOT"] = str(vendor_root(recipe.cudnn, work / "cudnn-root",
                                                "libcudnn.so"))
        else:
            env.pop("CUDNN_ROOT", None)
        try:
            import pybind11  # noqa: F401  (optional: only the unbuilt Python module uses it)

            env["INFINILM_PYBIND11_INCLUDES"] = os.pathsep.join(
                [pybind11.get_include(), sysconfig.get_paths()["include"]])
        except ImportError:
            pass
        xjobs = ["-j", str(jobs)] if jobs else []
        _log("[3/5] configuring xmake (offline)")
        _run([xmake, "g", "--network=private"], src, env, "xmake global config", log)
        _run([xmake, "repo", "-a", "-g", "infinilm-offline", str(_HERE / "xmake_repo")], src, env,
             "xmake local package repository", log)
        _run([xmake, "f", "-c", "-y", "-m", "release", *recipe.flags], src, env,
             "xmake configure", log)
        _log(f"[4/5] compiling ({backend}, {len(recipe.ops_built)} ops)")
        _run([xmake, "build", "-y", *xjobs, "infinicore_c_api"], src, env, "xmake build", log)
        _log(f"[5/5] installing into {prefix}")
        if staging.exists():
            shutil.rmtree(staging)
        for target in C_API_TARGETS:
            _run([xmake, "install", target], src, env, f"xmake install {target}", log)
        for lib in LIBRARIES:
            if not (staging / "lib" / lib).is_file():
                raise BuildError(f"install produced no {lib} under {staging}/lib; log: {log}")
        if (staging / "lib" / "libinfiniop.so").stat().st_size:  # faked steps write nothing
            check_loads(staging)
        stamp = {
            "infinicore_version": source.version,
            "source": source.describe(),
            "backend": backend,
            "recipe": _recipe_digest(backend, cuda_arch, ccl, source.key, ops,
                                     _cudnn_key(source.key, backend)),
            "cuda_arch": cuda_arch if backend == "nvidia" else None,
            # InfiniCCL on or off (stamps from before this key: off), and which NCCL
            "ccl": ccl,
            "nccl": nccl.describe() if nccl is not None else None,
            "cudnn": recipe.cudnn.describe() if recipe.cudnn is not None else None,
            "sdist_sha256": source.sha256 if source.kind != "tree" else None,
            "flags": recipe.flags,
            "patches": recipe.adaptations,
            "ops": {"request": ops, "built": recipe.ops_built,
                    "left_out": recipe.ops_left_out},
            "build_seconds": round(time.monotonic() - started, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (staging / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
        shutil.copy(log, staging / "build.log")
        if prefix.exists():
            old = prefix.with_name(prefix.name + f".old-{os.getpid()}")
            prefix.rename(old)
            staging.rename(prefix)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(prefix)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not keep_build_dir:
            shutil.rmtree(work, ignore_errors=True)
        else:
            _log(f"build directory kept: {work}")
    _log(f"done in {time.monotonic() - started:.1f} s: {prefix}")
    return prefix


# -- command line -------------------------------------------------------------------------


def _missing_source_action(choice: str) -> str:
    if choice != "auto":
        return choice
    # CI systems set CI (GitHub, GitLab, ...): there a missing source must fail the job.
    return "error" if os.environ.get("CI", "").lower() not in ("", "0", "false") else "skip"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(
        prog="python -m infinilm_models.runtime.build",
        usage="%(prog)s [options] [-- COMMAND ...]",
        description=(
            "Build InfiniCore's C libraries (libinfinirt, libinfiniop, libinfiniccl) with "
            "xmake, offline apart from the package index: from the PyPI sdist "
            f"infinicore=={INFINICORE_VERSION} (default) or from any source tree or tarball "
            "(--source). Idempotent: an up-to-date prefix is left alone. With `-- COMMAND`, "
            "run COMMAND afterwards with INFINI_ROOT set to the build. A user with their own "
            "InfiniCore build skips this and sets INFINI_ROOT instead."
        ),
        epilog="Every adaptation of the recipe to the tree (patches, stand-ins, ops left out) "
               "is printed and recorded in the prefix's .infinilm-build.json.",
    )
    parser.add_argument("--backend", choices=sorted(BACKEND_FLAGS), default="cpu",
                        help="device backend to compile (nvidia also includes cpu; default: cpu)")
    parser.add_argument("--source", type=Path, default=None,
                        help="an InfiniCore source directory, a tarball of one (any top "
                        "directory; a `git archive` names its commit), or a folder holding "
                        "one tarball (default: the PyPI sdist)")
    parser.add_argument("--sdist", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", type=Path, default=None,
                        help=f"install prefix (default: {cache_home()}/infinicore-<source>-"
                        "<backend>, one per source identity)")
    parser.add_argument("--ops", default="auto",
                        help="which operators to build: all, harness (the ops this project "
                        "binds and checks), or a comma-separated list of op folders; default "
                        "auto: harness for NVIDIA builds of trees other than the PyPI release "
                        "(upstream's full NVIDIA op set does not compile under CUDA 13), all "
                        "otherwise")
    parser.add_argument("--missing-source", choices=("auto", "error", "skip"), default="error",
                        help="when --source does not exist: fail (error, default), or say so and "
                        "exit 0 without building or running COMMAND (skip); auto: error where "
                        "the CI variable is set, skip elsewhere")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="parallel compile jobs")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--keep-build-dir", action="store_true",
                        help="keep the temporary source/build tree for debugging")
    parser.add_argument("--print-prefix", action="store_true",
                        help="print only the prefix on stdout at the end (for scripts)")
    parser.add_argument("--cuda-arch", default=os.environ.get("INFINILM_CUDA_ARCH", "native"),
                        help="GPU code to compile for the nvidia backend, e.g. sm_90 for H100/H200 "
                        "(default: $INFINILM_CUDA_ARCH or 'native', xmake's probe of the local "
                        "GPU; where that probe fails, only PTX is built and each process JITs "
                        "its kernels for about a minute)")
    parser.add_argument("--ccl", action="store_true",
                        help="also build InfiniCCL, the collectives for tensor parallelism "
                        "(nvidia only: NCCL from the pip package nvidia-nccl-cu13 or -cu12 of "
                        "this Python, or $NCCL_ROOT); a build with it also serves requests "
                        "without")
    parser.add_argument("--unless-infini-root", action="store_true",
                        help="do nothing when INFINI_ROOT names an existing InfiniCore install "
                        "(a vendor's own build); used by tox and CI")
    args = parser.parse_args(argv)
    root = os.environ.get("INFINI_ROOT")
    if args.unless_infini_root and root:
        if not (Path(root) / "lib" / "libinfiniop.so").is_file():
            print(f"error: INFINI_ROOT={root} has no lib/libinfiniop.so", file=sys.stderr)
            return 1
        _log(f"INFINI_ROOT={root} is set: using that build, not building")
        return _exec(command, Path(root))
    source_path = args.source or args.sdist
    if source_path is not None and not source_path.expanduser().exists():
        if _missing_source_action(args.missing_source) == "skip":
            _log(f"SKIPPED: no InfiniCore source at {source_path} (nothing built"
                 + (f", not run: {' '.join(command)}" if command else "") + "); pass --source "
                 "to a tree or tarball to build it")
            return 0
    try:
        out = build(args.backend, args.prefix, source=source_path, jobs=args.jobs,
                    force=args.force, keep_build_dir=args.keep_build_dir,
                    cuda_arch=args.cuda_arch, ccl=args.ccl, ops=args.ops)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.print_prefix:
        print(out)
    elif not command:
        _log(f"use it with: export INFINI_ROOT={out}")
    return _exec(command, out)


def _exec(command: list[str], prefix: Path) -> int:
    """Run `command` with INFINI_ROOT=prefix; its exit status is ours."""
    if not command:
        return 0
    _log(f"running with INFINI_ROOT={prefix}: {' '.join(command)}")
    try:
        return subprocess.run(command, env={**os.environ, "INFINI_ROOT": str(prefix)}).returncode
    except OSError as e:
        print(f"error: cannot run {command[0]!r}: {e}", file=sys.stderr)
        return 127


__all__ = ["BuildError", "Source", "build", "default_prefix", "find_cudnn", "find_nccl",
           "is_tarball", "main", "read_stamp", "sha256_file"]

if __name__ == "__main__":
    sys.exit(main())
