"""Build InfiniCore's C libraries from the PyPI sdist, offline, into a prefix.

    python -m infinilm_models.runtime.build --backend cpu [--prefix DIR]
    python -m infinilm_models.runtime.build --backend nvidia --ccl   # with InfiniCCL (NCCL)

The sdist (`infinicore` 0.1.0) is a source tree built with xmake. Three traps are
handled here so that a clean machine with only PyPI reachable gets a working build:

* xmake resolves `add_requires("pybind11")`/`("openmp")` by cloning its package
  repositories; we point it at a small local repository (``xmake_repo/``) whose
  packages only fetch from the system, and set ``--network=private``.
* xmake keeps global state in ~/.xmake; a private ``XMAKE_GLOBALDIR`` per build keeps
  runs from leaking into each other (and into the user's own xmake setup).
* `pip install infinicore` builds as a side effect of setup.py with no backend flags
  and caches an empty wheel; we drive xmake on the downloaded sdist instead.

The build is idempotent: a stamp in the prefix records what was built; an identical
request returns at once. Installation goes to a temporary prefix renamed into place,
so an interrupted build never leaves a half-installed prefix behind.
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

INFINICORE_VERSION = "0.1.0"
STAMP_NAME = ".infinilm-build.json"
# Bump when the recipe (flags, patches, repo definitions) changes, to invalidate stamps.
RECIPE_VERSION = 3
LIBRARIES = ("libinfinirt.so", "libinfiniop.so", "libinfiniccl.so")
# Targets of the sdist's xmake.lua that make up the C API (not the pybind11 module).
C_API_TARGETS = ("infinirt", "infiniop", "infiniccl")

BACKEND_FLAGS: dict[str, list[str]] = {
    "cpu": ["--cpu=y", "--omp=y"],
    # cuDNN is optional for the ops we use and absent from most CUDA images.
    "nvidia": ["--cpu=y", "--omp=y", "--nv-gpu=y", "--cudnn=n"],
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
# The pip packages of NCCL, newest CUDA first; any NCCL 2 links (headers and ABI are stable).
NCCL_DISTRIBUTIONS = ("nvidia-nccl-cu13", "nvidia-nccl-cu12")

_HERE = Path(__file__).resolve().parent


class BuildError(RuntimeError):
    """A build step failed; the message says which and how to fix it."""


def cache_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "infinilm-models"


def default_prefix(backend: str) -> Path:
    """Where `build` installs by default and where library discovery looks second."""
    return cache_home() / f"infinicore-{INFINICORE_VERSION}-{backend}"


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


def _recipe_digest(backend: str, cuda_arch: str = "native", ccl: bool = False) -> str:
    h = hashlib.sha256()
    parts = [RECIPE_VERSION, BACKEND_FLAGS[backend], COMMON_FLAGS, C_API_TARGETS]
    if backend == "nvidia" and cuda_arch != "native":
        parts.append(cuda_arch)
    if ccl:  # only when on: stamps of builds without InfiniCCL keep their digest
        parts.append("ccl")
    h.update(json.dumps(parts).encode())
    for p in sorted((_HERE / "xmake_repo").rglob("*.lua")):
        h.update(p.read_bytes())
    for patch in PATCHES:
        if backend in patch.backends:
            h.update(repr(patch).encode())
    return h.hexdigest()[:16]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


@dataclass(frozen=True)
class Nccl:
    """Where NCCL is: the folder holding nccl.h, the shared library, and where from."""

    include: Path
    library: Path
    source: str

    def describe(self) -> dict[str, str]:
        return {"include": str(self.include), "library": str(self.library),
                "source": self.source}


def find_nccl(search_path: list[str] | None = None,
              environ: dict[str, str] | None = None) -> Nccl:
    """NCCL for an InfiniCCL build on NVIDIA: $NCCL_ROOT if set (include/nccl.h and
    lib/libnccl.so, xmake's own convention), else the pip package nvidia-nccl-cu13 or
    -cu12 of this environment (`search_path`: where to look instead of sys.path), found
    from its file list with importlib.metadata: nothing is imported."""
    env = os.environ if environ is None else environ
    root = env.get("NCCL_ROOT")
    if root:
        inc, lib = Path(root) / "include", Path(root) / "lib" / "libnccl.so"
        if not (inc / "nccl.h").is_file() or not lib.is_file():
            raise BuildError(f"NCCL_ROOT={root} lacks include/nccl.h or lib/libnccl.so; unset "
                             "it to use the pip package nvidia-nccl-cu13/-cu12")
        return Nccl(inc, lib.resolve(), f"NCCL_ROOT={root}")
    for name in NCCL_DISTRIBUTIONS:
        dist = next(iter(importlib.metadata.distributions(
            name=name, **({"path": search_path} if search_path is not None else {}))), None)
        if dist is None:
            continue
        found: dict[str, Path] = {}
        for f in dist.files or ():
            if f.name in ("nccl.h", "libnccl.so.2"):
                found[f.name] = Path(str(dist.locate_file(f)))
        # Without a file list (RECORD), the layout of every release so far.
        found.setdefault("nccl.h", Path(str(dist.locate_file("nvidia/nccl/include/nccl.h"))))
        found.setdefault("libnccl.so.2",
                         Path(str(dist.locate_file("nvidia/nccl/lib/libnccl.so.2"))))
        header, lib = found["nccl.h"], found["libnccl.so.2"]
        if header.is_file() and lib.is_file():
            return Nccl(header.parent.resolve(), lib.resolve(), f"{name} {dist.version}")
        raise BuildError(f"{name} {dist.version} is installed but {header} or {lib} is "
                         "missing; reinstall it")
    raise BuildError(
        "--ccl on nvidia needs NCCL: install the pip package into this environment ("
        + sys.executable + "): pip install nvidia-nccl-cu13 (CUDA 13) or nvidia-nccl-cu12 "
        "(CUDA 12); or set NCCL_ROOT to a folder with include/nccl.h and lib/libnccl.so")


def nccl_root(nccl: Nccl, dest: Path) -> Path:
    """A scratch NCCL_ROOT in xmake's layout: include -> the package's include folder,
    lib/libnccl.so -> its libnccl.so.2 (the pip package ships no unversioned name)."""
    (dest / "lib").mkdir(parents=True, exist_ok=True)
    for link, target in ((dest / "include", nccl.include),
                         (dest / "lib" / "libnccl.so", nccl.library)):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return dest


def link_flags(nccl: Nccl | None) -> list[str]:
    """COMMON_FLAGS, and with InfiniCCL the folder of libnccl.so.2 on the RUNPATH too:
    libinfiniccl.so needs it, and a pip package's folder is on no default search path
    (torch finds it through its own RUNPATH; this project imports no torch)."""
    if nccl is None:
        return list(COMMON_FLAGS)
    libdir = str(nccl.library.parent)
    if any(c in libdir for c in ": \t\n$,"):
        raise BuildError(f"NCCL folder {libdir!r}: a character that cannot go on a RUNPATH")
    return [COMMON_FLAGS[0] + ":" + libdir]


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
            + "\nPass --sdist PATH to build from a local copy."
        )
    return found[0]


def set_cuda_arch(src: Path, arch: str) -> str:
    """Compile device code for `arch` instead of xmake's "native" detection.

    "native" asks the GPU at configure time; where that probe fails (a build box without
    the card, some sandboxes) nvcc falls back to PTX alone, and every fresh process then
    spends about a minute JIT-compiling kernels before its first op.
    """
    target = src / "xmake" / "nvidia.lua"
    text = target.read_text()
    old = 'add_cugencodes("native")'
    if old not in text:
        raise BuildError(f"{target}: no {old} to replace (sdist changed?)")
    target.write_text(text.replace(old, f'add_cugencodes("{arch}")'))
    return f"xmake/nvidia.lua: CUDA code for {arch} instead of native detection"


def apply_patches(src: Path, backend: str) -> list[str]:
    applied = []
    for patch in PATCHES:
        if backend not in patch.backends:
            continue
        target = src / patch.path
        raw = target.read_bytes()
        # The file starts with a UTF-8 BOM; keep it byte-for-byte.
        bom = raw.startswith(b"\xef\xbb\xbf")
        text = patch.prepend + raw.decode("utf-8-sig")
        if not any(old in text for old, _ in patch.replacements):
            raise BuildError(f"patch for {patch.path}: nothing to replace (sdist changed?)")
        for old, new in patch.replacements:
            text = text.replace(old, new)
        target.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
        applied.append(f"{patch.path}: {patch.why}")
    return applied


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


def is_up_to_date(prefix: Path, backend: str, cuda_arch: str = "native",
                  ccl: bool = False) -> bool:
    """The prefix holds what this request builds. A build with InfiniCCL also satisfies a
    request without (it is the same build plus the collectives), so that a plain
    `--backend nvidia` (tox, CI) does not rebuild it away; its NCCL must still be there."""
    stamp = read_stamp(prefix)
    if not stamp or stamp.get("backend") != backend:
        return False
    accepted = {_recipe_digest(backend, cuda_arch, ccl)}
    if not ccl:
        accepted.add(_recipe_digest(backend, cuda_arch, True))
    if stamp.get("recipe") not in accepted:
        return False
    if stamp.get("ccl"):  # linked against this NCCL, found through the RUNPATH
        nccl = stamp.get("nccl") or {}
        if not Path(nccl.get("library", "")).is_file():
            return False
    return all((prefix / "lib" / lib).is_file() for lib in LIBRARIES)


def build(backend: str, prefix: Path, *, sdist: Path | None = None, jobs: int | None = None,
          force: bool = False, keep_build_dir: bool = False,
          cuda_arch: str = "native", ccl: bool = False) -> Path:
    """Build and install InfiniCore for `backend` into `prefix`; return the prefix.
    `ccl`: with InfiniCCL (NVIDIA: NCCL from `find_nccl`)."""
    if backend not in BACKEND_FLAGS:
        raise BuildError(f"unknown backend {backend!r}; choose from {sorted(BACKEND_FLAGS)}")
    check_cuda_arch(cuda_arch)
    check_ccl(backend, ccl)
    prefix = prefix.resolve()
    if not force and is_up_to_date(prefix, backend, cuda_arch, ccl):
        with_ccl = " with InfiniCCL" if (read_stamp(prefix) or {}).get("ccl") else ""
        _log(f"up to date: {prefix} (backend {backend}{with_ccl}); use --force to rebuild")
        return prefix
    nccl = find_nccl() if ccl else None
    if nccl is not None:
        _log(f"InfiniCCL with NCCL from {nccl.source}: {nccl.library}")
    flags = BACKEND_FLAGS[backend] + (["--ccl=y"] if ccl else []) + link_flags(nccl)
    xmake = check_tools(backend)
    started = time.monotonic()
    sdist = sdist.resolve() if sdist else fetch_sdist(cache_home() / "sdist")
    if not sdist.is_file():
        raise BuildError(f"sdist not found: {sdist}")

    prefix.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"infinicore-build-{backend}-"))
    log = work / "build.log"
    staging = prefix.with_name(prefix.name + f".tmp-{os.getpid()}")
    try:
        _log(f"[1/5] unpacking {sdist.name}")
        with tarfile.open(sdist) as tar:
            # The data filter refuses absolute paths and links out of the tree.
            if hasattr(tarfile, "data_filter"):
                tar.extractall(work, filter="data")
            else:  # pragma: no cover - Python < 3.10.12
                tar.extractall(work)
        src = work / f"infinicore-{INFINICORE_VERSION}"
        _log("[2/5] patching sources")
        for line in apply_patches(src, backend):
            _log(f"  patched {line}")
        if backend == "nvidia" and cuda_arch != "native":
            _log(f"  patched {set_cuda_arch(src, cuda_arch)}")

        env = dict(os.environ)
        env.update(
            XMAKE_GLOBALDIR=str(work / "xmake-global"),
            INFINI_ROOT=str(staging),
            XMAKE_ROOT="y",  # xmake refuses to run as root (CI and containers) without it
        )
        env.pop("XMAKE_CONFIGDIR", None)
        if nccl is not None:
            env["NCCL_ROOT"] = str(nccl_root(nccl, work / "nccl-root"))
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
        _run([xmake, "f", "-c", "-y", "-m", "release", *flags], src, env,
             "xmake configure", log)
        _log(f"[4/5] compiling ({backend})")
        _run([xmake, "build", "-y", *xjobs, "infinicore_c_api"], src, env, "xmake build", log)
        _log(f"[5/5] installing into {prefix}")
        if staging.exists():
            shutil.rmtree(staging)
        for target in C_API_TARGETS:
            _run([xmake, "install", target], src, env, f"xmake install {target}", log)
        for lib in LIBRARIES:
            if not (staging / "lib" / lib).is_file():
                raise BuildError(f"install produced no {lib} under {staging}/lib; log: {log}")
        stamp = {
            "infinicore_version": INFINICORE_VERSION,
            "backend": backend,
            "recipe": _recipe_digest(backend, cuda_arch, ccl),
            "cuda_arch": cuda_arch if backend == "nvidia" else None,
            # InfiniCCL on or off (stamps from before this key: off), and which NCCL
            "ccl": ccl,
            "nccl": nccl.describe() if nccl is not None else None,
            "sdist_sha256": sha256_file(sdist),
            "flags": flags,
            "patches": [p.path for p in PATCHES if backend in p.backends],
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infinilm_models.runtime.build",
        description=(
            "Build InfiniCore's C libraries (libinfinirt, libinfiniop, libinfiniccl) from the "
            f"PyPI sdist infinicore=={INFINICORE_VERSION} with xmake, offline apart from the "
            "package index. Idempotent: an up-to-date prefix is left alone. A user with their "
            "own InfiniCore build skips this and sets INFINI_ROOT instead."
        ),
    )
    parser.add_argument("--backend", choices=sorted(BACKEND_FLAGS), default="cpu",
                        help="device backend to compile (nvidia also includes cpu; default: cpu)")
    parser.add_argument("--prefix", type=Path, default=None,
                        help=f"install prefix (default: {default_prefix('<backend>')})")
    parser.add_argument("--sdist", type=Path, default=None,
                        help=f"build from this local infinicore-{INFINICORE_VERSION}.tar.gz "
                        "instead of downloading")
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
        return 0
    prefix = args.prefix or default_prefix(args.backend)
    try:
        out = build(args.backend, prefix, sdist=args.sdist, jobs=args.jobs, force=args.force,
                    keep_build_dir=args.keep_build_dir, cuda_arch=args.cuda_arch,
                    ccl=args.ccl)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.print_prefix:
        print(out)
    else:
        _log(f"use it with: export INFINI_ROOT={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
