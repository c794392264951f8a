"""Finding and loading InfiniCore's shared libraries, and declaring the C API.

This module and its siblings in `runtime/` are the only code that touches ctypes.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from ctypes import POINTER, c_int, c_size_t, c_ssize_t, c_void_p
from dataclasses import dataclass
from pathlib import Path

from . import discovery
from .capabilities import CCL_INIT_RANK, GRAPH, Api, Build, InfinicclUniqueId, build_at, remember

# Where a build is looked for (re-exported: the runtime's public names for it)
from .discovery import (  # noqa: F401
    LibraryNotFound,
    candidate_roots,
    default_backend,
    find_root,
    loaded_root,
    set_default_backend,
)

STATUS_NAMES = {
    0: "INFINI_STATUS_SUCCESS",
    1: "INFINI_STATUS_INTERNAL_ERROR",
    2: "INFINI_STATUS_NOT_IMPLEMENTED",
    3: "INFINI_STATUS_BAD_PARAM",
    4: "INFINI_STATUS_NULL_POINTER",
    5: "INFINI_STATUS_DEVICE_TYPE_NOT_SUPPORTED",
    6: "INFINI_STATUS_DEVICE_NOT_FOUND",
    7: "INFINI_STATUS_DEVICE_NOT_INITIALIZED",
    8: "INFINI_STATUS_DEVICE_ARCHITECTURE_NOT_SUPPORTED",
    10: "INFINI_STATUS_BAD_TENSOR_DTYPE",
    11: "INFINI_STATUS_BAD_TENSOR_SHAPE",
    12: "INFINI_STATUS_BAD_TENSOR_STRIDES",
    13: "INFINI_STATUS_INSUFFICIENT_WORKSPACE",
}
# Statuses that mean "this backend does not do this", as opposed to "you called it wrong".
UNSUPPORTED_STATUSES = frozenset({2, 5, 8, 10})


class InfiniError(RuntimeError):
    """A non-success infiniStatus_t, with the call and the tensors involved."""

    def __init__(self, call: str, status: int, detail: str = "") -> None:
        self.call = call
        self.status = status
        self.status_name = STATUS_NAMES.get(status, f"UNKNOWN_STATUS_{status}")
        msg = f"{call} failed: {self.status_name} ({status})"
        super().__init__(msg + (f" [{detail}]" if detail else ""))

    @property
    def unsupported(self) -> bool:
        return self.status in UNSUPPORTED_STATUSES


class NotExported(InfiniError):
    """The loaded build does not export an op or API function: "unsupported" by this
    build, not a wrong call (a PyPI 0.1.0 build has none of upstream's fused ops)."""

    def __init__(self, call: str, root: object) -> None:
        self.call, self.status = call, 2
        self.status_name = "NOT_EXPORTED"
        RuntimeError.__init__(self, f"{call}: not exported by this build ({root})")

    @property
    def unsupported(self) -> bool:
        return True


def check(status: int, call: str, detail: str | Callable[[], str] = "") -> None:
    """Raise InfiniError for a failed call; `detail` may be a callable so that the
    (costly) description of shapes is only built on failure."""
    if status != 0:
        raise InfiniError(call, status, detail() if callable(detail) else detail)


@dataclass
class Library:
    """The loaded build: made from its `Build` record (capabilities.py), it declares
    exactly the ops and optional APIs that record lists."""

    root: Path
    rt: ctypes.CDLL
    op: ctypes.CDLL
    ccl: ctypes.CDLL | None
    build: Build
    ccl_error: str | None = None  # why libinfiniccl.so is there but did not load

    @property
    def ops(self) -> frozenset[str]:
        """The ops of ops/specs.py this build exports (all declared)."""
        return self.build.bound_ops

    @property
    def graph_api(self) -> bool:
        """infinirt's stream capture and graph calls are declared."""
        return self.build.graph_api

    @property
    def ccl_init_rank(self) -> bool:
        """infinicclGetUniqueId/infinicclCommInitRank are declared."""
        return self.ccl is not None and self.build.ccl_init_rank

    def path(self, name: str) -> Path:
        return self.root / "lib" / name


_lock = threading.Lock()
_lib: Library | None = None


def _declare(lib: ctypes.CDLL, name: str, *argtypes) -> None:
    fn = getattr(lib, name)
    fn.argtypes = list(argtypes)
    fn.restype = c_int


P = c_void_p
PP = POINTER(c_void_p)
SIZE_P = POINTER(c_size_t)


def _declare_rt(rt: ctypes.CDLL) -> None:
    _declare(rt, "infinirtInit")
    _declare(rt, "infinirtGetDeviceCount", c_int, POINTER(c_int))
    _declare(rt, "infinirtSetDevice", c_int, c_int)
    _declare(rt, "infinirtGetDevice", POINTER(c_int), POINTER(c_int))
    _declare(rt, "infinirtDeviceSynchronize")
    _declare(rt, "infinirtStreamCreate", PP)
    _declare(rt, "infinirtStreamDestroy", P)
    _declare(rt, "infinirtStreamSynchronize", P)
    _declare(rt, "infinirtMalloc", PP, c_size_t)
    _declare(rt, "infinirtFree", P)
    _declare(rt, "infinirtMallocHost", PP, c_size_t)
    _declare(rt, "infinirtFreeHost", P)
    _declare(rt, "infinirtMemcpy", P, P, c_size_t, c_int)


def _declare_api(lib: ctypes.CDLL, api: Api) -> None:
    for name, args in api.functions.items():
        _declare(lib, name, *args)


def _declare_ccl(ccl: ctypes.CDLL) -> None:
    """The three functions of InfiniCCL 0.1.0 (include/infiniccl.h). Every build exports
    them; without a CCL backend for the device they answer DEVICE_TYPE_NOT_SUPPORTED."""
    _declare(ccl, "infinicclCommInitAll", c_int, PP, c_int, POINTER(c_int))
    _declare(ccl, "infinicclCommDestroy", P)
    # sendbuf, recvbuf, count, infiniDtype_t, infinicclReduceOp_t, comm, stream
    _declare(ccl, "infinicclAllReduce", P, P, c_size_t, c_int, c_int, P, P)


INFINICCL_UNIQUE_ID_BYTES = ctypes.sizeof(InfinicclUniqueId)


def has_ccl_init_rank(ccl: object | None) -> bool:
    """Whether `ccl` exports the one-process-per-rank API: the loaded libinfiniccl as its
    Build lists it; any other object (a stand-in, whose exports nobody read) by name."""
    if ccl is None:
        return False
    if _lib is not None and ccl is _lib.ccl:
        return _lib.ccl_init_rank
    return all(hasattr(ccl, name) for name in CCL_INIT_RANK.symbols)


def declare_ccl_init_rank(ccl: ctypes.CDLL) -> None:
    """Declare infinicclGetUniqueId and infinicclCommInitRank on a stand-in (the loaded
    library declares them at load where its Build has them)."""
    if _lib is None or ccl is not _lib.ccl:
        _declare_api(ccl, CCL_INIT_RANK)


def _declare_op(op: ctypes.CDLL, build: Build) -> None:
    """Declare the handle and tensor-descriptor calls (every build has them) and each op of
    ops/specs.py the build exports (`Build.bound_ops`). An op the build lacks stays
    undeclared: calling it raises NotExported (an 'unsupported')."""
    from .ops.specs import BY_NAME, argtypes

    _declare(op, "infiniopCreateHandle", PP)
    _declare(op, "infiniopDestroyHandle", P)
    _declare(op, "infiniopCreateTensorDescriptor", PP, c_size_t, POINTER(c_size_t),
             POINTER(c_ssize_t), c_int)
    _declare(op, "infiniopDestroyTensorDescriptor", P)
    for name in sorted(build.bound_ops):
        for fn, args in argtypes(BY_NAME[name]).items():
            _declare(op, fn, *args)


def load() -> Library:
    """Load InfiniCore once per process.

    InfiniCore 0.1.0 installs libinfiniop.so without RUNPATH and libinfinirt.so without
    SONAME; our build adds RUNPATH=$ORIGIN so the NEEDED entry resolves next to it.
    Loading libinfinirt first also fails early, with a clear message, on a broken prefix.
    """
    global _lib
    with _lock:
        if _lib is not None:
            return _lib
        root = find_root()
        libdir = root / "lib"
        # Local, not global: InfiniCore's symbols (and those of the CUDA toolkit it links)
        # must not interpose on libraries that other extensions load later; seen on NVIDIA:
        # importing pyarrow (via transformers) after a global load aborted the process.
        mode = ctypes.RTLD_LOCAL
        try:
            rt = ctypes.CDLL(str(libdir / "libinfinirt.so"), mode=mode)
            op = ctypes.CDLL(str(libdir / "libinfiniop.so"), mode=mode)
        except OSError as e:
            hint = ""
            if "libinfinirt.so" in str(e):
                # A build made without our recipe has no RUNPATH (see build/vendor.py).
                hint = (f"\nThis build's libinfiniop.so has no RUNPATH: run with "
                        f"LD_LIBRARY_PATH={libdir} (InfiniCore's own setup), or rebuild with "
                        "`python -m infinilm_models.build`.")
            raise LibraryNotFound(f"failed to load InfiniCore from {libdir}: {e}{hint}") from e
        # InfiniCCL is optional: a build with it needs NCCL (libnccl.so.2, on its RUNPATH);
        # if that is gone, the ops still work and only a communicator reports why.
        ccl, ccl_error = None, None
        ccl_path = libdir / "libinfiniccl.so"
        if ccl_path.is_file():
            try:
                ccl = ctypes.CDLL(str(ccl_path), mode=mode)
            except OSError as e:
                ccl_error = str(e)
        # What this build can do, as read from its files; only a build whose ELF tables
        # could not be read is completed by looking the names up (dlsym) here.
        build = build_at(root).probed(
            lambda name: any(hasattr(lib, name) for lib in (rt, op, ccl) if lib is not None))
        remember(build)
        try:
            _declare_rt(rt)
            if build.graph_api:
                _declare_api(rt, GRAPH)
            _declare_op(op, build)
            if ccl is not None:
                _declare_ccl(ccl)
                if build.ccl_init_rank:
                    _declare_api(ccl, CCL_INIT_RANK)
        except AttributeError as e:
            raise LibraryNotFound(
                f"{libdir} lacks a function every InfiniCore build has ({e}); is it InfiniCore?"
            ) from e
        check(rt.infinirtInit(), "infinirtInit")
        _lib = Library(root=root, rt=rt, op=op, ccl=ccl, build=build, ccl_error=ccl_error)
        discovery.mark_loaded(root)
        return _lib
