"""Building a request into its prefix: unpack, adapt, configure, compile, install into a
temporary prefix renamed into place, and stamp it. An identical request finds the stamp
and returns at once; an interrupted build leaves no half-installed prefix behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from . import vendor, xmake
from .errors import BuildError, log
from .fetch import fetch_sdist, unpack
from .prefix import STAMP_NAME, cache_home, read_stamp
from .recipe import C_API_TARGETS, XMAKE_REPO, Recipe, cudnn_key, plan_recipe, recipe_digest
from .request import Request, make_request
from .source import Source, resolve

LIBRARIES = ("libinfinirt.so", "libinfiniop.so", "libinfiniccl.so")


def is_up_to_date(prefix: Path, backend: str, cuda_arch: str = "native",
                  ccl: bool = False, source_key: str | None = None,
                  ops: str = "auto", xmake_options: tuple[tuple[str, str], ...] = ()) -> bool:
    """The prefix holds what this request builds. A build with InfiniCCL also satisfies a
    request without (it is the same build plus the collectives), so that a plain
    `--backend nvidia` (tox, CI) does not rebuild it away; its NCCL must still be there."""
    stamp = read_stamp(prefix)
    if not stamp or stamp.get("backend") != backend:
        return False
    cudnn = cudnn_key(source_key, backend)
    accepted = {recipe_digest(backend, cuda_arch, c, source_key, ops, cudnn, xmake_options)
                for c in ((ccl,) if ccl else (False, True))}
    if stamp.get("recipe") not in accepted:
        return False
    for dep in ("nccl", "cudnn"):  # linked against these, found through the RUNPATH
        found = stamp.get(dep) or {}
        if found and not Path(found.get("library", "")).is_file():
            return False
    return all((prefix / "lib" / lib).is_file() for lib in LIBRARIES)


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
          ccl: bool = False, ops: str = "auto",
          xmake_options: Iterable[str | tuple[str, str]] = ()) -> Path:
    """Build and install InfiniCore for `backend` (a backend or an alias) into `prefix`
    (default: the source's default prefix); return the prefix. `source`: a tree, tarball
    or resolved Source (default: the PyPI sdist; `sdist` is the older name). `ccl`: with
    InfiniCCL. `xmake_options`: KEY=VALUE configure options beyond the recipe's."""
    req = make_request(backend, prefix, source=source if source is not None else sdist,
                       cuda_arch=cuda_arch, ccl=ccl, ops=ops, xmake_options=xmake_options)
    if not force and is_up_to_date(req.prefix, req.backend, req.cuda_arch, req.ccl,
                                   req.source_key, req.ops, req.xmake_options):
        with_ccl = " with InfiniCCL" if (read_stamp(req.prefix) or {}).get("ccl") else ""
        log(f"up to date: {req.prefix} (backend {req.backend}{with_ccl}); use --force to "
            "rebuild")
        return req.prefix
    nccl = vendor.find_nccl() if req.ccl else None
    if nccl is not None:
        log(f"InfiniCCL with NCCL from {nccl.source}: {nccl.library}")
    cudnn = vendor.find_cudnn() if req.backend == "nvidia" else None
    tool = xmake.check_tools(req.backend)
    started = time.monotonic()
    src_in = req.source or resolve(fetch_sdist(cache_home() / "sdist"))
    log(f"source: {src_in.label} [{src_in.key}]")
    req.prefix.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"infinicore-build-{req.backend}-"))
    staging = req.prefix.with_name(req.prefix.name + f".tmp-{os.getpid()}")
    try:
        log(f"[1/5] unpacking {src_in.path.name}")
        src = unpack(src_in, work)
        log("[2/5] adapting the recipe to the tree")
        recipe = plan_recipe(src, src_in, req.backend, req.cuda_arch, req.ccl, req.ops, nccl,
                             cudnn, xmake_options=req.xmake_options)
        for line in recipe.adaptations:
            log(f"  {line}")
        by_reason: dict[str, list[str]] = {}
        for op, why in sorted(recipe.ops_left_out.items()):
            by_reason.setdefault(why, []).append(op)
        for why, names in by_reason.items():
            log(f"  left out, {why}: {', '.join(names)}")
        _compile(tool, src, work, staging, req, recipe, nccl, jobs)
        stamp = _stamp(req, src_in, recipe, nccl, started)
        (staging / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
        shutil.copy(work / "build.log", staging / "build.log")
        _replace(req.prefix, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not keep_build_dir:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"build directory kept: {work}")
    log(f"done in {time.monotonic() - started:.1f} s: {req.prefix}")
    return req.prefix


def _compile(tool: str, src: Path, work: Path, staging: Path, req: Request, recipe: Recipe,
             nccl: vendor.VendorLib | None, jobs: int | None) -> None:
    """xmake's steps, offline, installing into `staging`."""
    log_file = work / "build.log"
    log_file.touch()
    env = dict(os.environ)
    env.update(
        XMAKE_GLOBALDIR=str(work / "xmake-global"),
        INFINI_ROOT=str(staging),
        XMAKE_ROOT="y",  # xmake refuses to run as root (CI and containers) without it
    )
    env.pop("XMAKE_CONFIGDIR", None)
    if nccl is not None:
        env["NCCL_ROOT"] = str(vendor.nccl_root(nccl, work / "nccl-root"))
    if recipe.cudnn is not None:
        env["CUDNN_ROOT"] = str(vendor.vendor_root(recipe.cudnn, work / "cudnn-root",
                                                   "libcudnn.so"))
    else:
        env.pop("CUDNN_ROOT", None)
    try:
        import pybind11  # noqa: F401  (optional: only the unbuilt Python module uses it)

        env["INFINILM_PYBIND11_INCLUDES"] = os.pathsep.join(
            [pybind11.get_include(), sysconfig.get_paths()["include"]])
    except ImportError:
        pass
    run = xmake.run_step
    log("[3/5] configuring xmake (offline)")
    run([tool, "g", "--network=private"], src, env, "xmake global config", log_file)
    run([tool, "repo", "-a", "-g", "infinilm-offline", str(XMAKE_REPO)], src, env,
        "xmake local package repository", log_file)
    run(xmake.configure_command(tool, recipe.flags), src, env, "xmake configure", log_file)
    log(f"[4/5] compiling ({req.backend}, {len(recipe.ops_built)} ops)")
    run([tool, "build", "-y", *(["-j", str(jobs)] if jobs else []), "infinicore_c_api"], src,
        env, "xmake build", log_file)
    log(f"[5/5] installing into {req.prefix}")
    if staging.exists():
        shutil.rmtree(staging)
    for target in C_API_TARGETS:
        run([tool, "install", target], src, env, f"xmake install {target}", log_file)
    for lib in LIBRARIES:
        if not (staging / "lib" / lib).is_file():
            raise BuildError(f"install produced no {lib} under {staging}/lib; log: {log_file}")
    if (staging / "lib" / "libinfiniop.so").stat().st_size:  # faked steps write nothing
        check_loads(staging)


def _stamp(req: Request, source: Source, recipe: Recipe, nccl: vendor.VendorLib | None,
           started: float) -> dict:
    return {
        "infinicore_version": source.version,
        "source": source.describe(),
        "backend": req.backend,
        "recipe": req.digest(),
        "cuda_arch": req.cuda_arch if req.backend == "nvidia" else None,
        # InfiniCCL on or off (stamps from before this key: off), and which NCCL
        "ccl": req.ccl,
        "nccl": nccl.describe() if nccl is not None else None,
        "cudnn": recipe.cudnn.describe() if recipe.cudnn is not None else None,
        "sdist_sha256": source.sha256 if source.kind != "tree" else None,
        # how the tree builds the backend, and the user's own configure options
        "backend_option": recipe.backend.describe() if recipe.backend else None,
        "xmake_options": recipe.xmake_options,
        "flags": recipe.flags,
        "patches": recipe.adaptations,
        "ops": {"request": req.ops, "built": recipe.ops_built,
                "left_out": recipe.ops_left_out},
        "build_seconds": round(time.monotonic() - started, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _replace(prefix: Path, staging: Path) -> None:
    """Move the staged install into place; an old prefix goes only once the new is there."""
    if prefix.exists():
        old = prefix.with_name(prefix.name + f".old-{os.getpid()}")
        prefix.rename(old)
        staging.rename(prefix)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(prefix)
