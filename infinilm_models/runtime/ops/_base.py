"""What every op wrapper shares: cached descriptors and a per-device workspace.

A descriptor depends on the device and on each tensor's dtype, shape and strides (and
on scalar creation parameters such as epsilon), never on the data pointers, so one is
created the first time a signature is seen and reused on every later call.

Threads (one per rank of a tensor-parallel model; ctypes releases the GIL during a call,
so their ops overlap): descriptors are shared by every thread of a device, since they hold
shapes and strides only, no pointers and no per-call state (the CPU and CUDA compute calls
only read them); the workspace is per (device, thread), since two threads on one device
(ranks sharing the CPU) would otherwise write the same scratch memory at the same time.
"""

from __future__ import annotations

import ctypes
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from threading import get_ident

from ..device import Device
from ..device import _state as _thread
from ..library import InfiniError, NotExported, check, load
from ..memory import DeviceBuffer, zero_fill
from ..tensor import Tensor
from .specs import spec as _spec

# Enough for every shape of a long decode (attention shapes change with the cache length)
# while keeping a runaway caller from holding descriptors without bound.
MAX_CACHED_DESCRIPTORS = 4096
# INFINILM_DESCRIPTOR_CACHE=0 creates and destroys a descriptor on every call: what the
# cache saves, measurable with the benchmarks (and the regression bench-compare must catch).
CACHE_DESCRIPTORS = os.environ.get("INFINILM_DESCRIPTOR_CACHE", "1") != "0"


def describe(tensors: Sequence[Tensor | None], names: Sequence[str]) -> str:
    return ", ".join(f"{n}={t.describe()}" for n, t in zip(names, tensors) if t is not None)


def tensor_descriptor(t: Tensor) -> ctypes.c_void_p:
    lib = load()
    desc = ctypes.c_void_p()
    shape = (ctypes.c_size_t * t.ndim)(*t.shape)
    strides = (ctypes.c_ssize_t * t.ndim)(*t.strides)
    check(lib.op.infiniopCreateTensorDescriptor(ctypes.byref(desc), t.ndim, shape, strides,
                                                int(t.dtype)),
          "infiniopCreateTensorDescriptor", t.describe)
    return desc


class Workspace:
    """One scratch buffer per (device, thread), grown on demand and shared by the ops of
    that thread: a thread issues its calls in order on one stream, so no two of its ops
    use it at the same time. Kept in thread-local storage, so a thread's workspaces are
    released when the thread ends."""

    _local = threading.local()  # .by_device: dict[Device, Workspace] of the calling thread
    _all: weakref.WeakSet[Workspace] = weakref.WeakSet()  # of every thread

    def __init__(self, device: Device) -> None:
        self.device = device
        self.thread = get_ident()  # the thread that owns it (CachedOp._compute checks this)
        self.buffer: DeviceBuffer | None = None
        Workspace._all.add(self)

    @classmethod
    def zero_all(cls) -> None:
        """Zero every thread's workspace (while none of them runs an op): what one call
        left in scratch memory never reaches a later, independent one."""
        for ws in list(cls._all):
            if ws.buffer is not None:
                zero_fill(ws.buffer)

    @classmethod
    def of(cls, device: Device) -> Workspace:
        """The calling thread's workspace of `device`."""
        by_device = getattr(cls._local, "by_device", None)
        if by_device is None:
            by_device = cls._local.by_device = {}
        ws = by_device.get(device)
        if ws is None:
            ws = by_device[device] = cls(device)
        return ws

    # Captured graphs hold the pointers they were captured with: while any exists, a
    # buffer that is outgrown is kept alive (retired) instead of being freed.
    pinned = 0
    retired: list[DeviceBuffer] = []

    def get(self, nbytes: int) -> tuple[int | None, int]:
        """(pointer, size) for a compute call; plain ints, which the c_void_p argtypes
        convert, so the hot path builds no ctypes object per op call."""
        if nbytes == 0:
            return None, 0
        if self.buffer is None or self.buffer.nbytes < nbytes:
            if Workspace.pinned and self.buffer is not None:
                Workspace.retired.append(self.buffer)
            self.buffer = None  # release before allocating the larger one
            self.buffer = DeviceBuffer(self.device, nbytes)
            # InfiniCore 0.1.0's CPU f32 gemm reads C even when beta == 0 (a known defect),
            # and its fused attention runs such gemms on this workspace: NaN bit patterns in
            # fresh memory would turn into NaN results at random. Ops only write finite
            # values here afterwards, so zeroing once per allocation is enough.
            zero_fill(self.buffer)
        return self.buffer.ptr, self.buffer.nbytes


class CachedOp:
    """An infiniop operator, as its row of ops/specs.py describes it: create, workspace
    size, compute and destroy calls. Tensors named in the row's `optional` may be None."""

    instances: list[CachedOp] = []  # every op wrapper, for descriptors_created()
    # Called before every op call with (op, tensors, compute_args, create_params): the
    # conformance suite keeps the calls of an op check (to replay a failure alone) and
    # marks the call in flight (to name it if the process dies). Empty on the hot path,
    # where it costs one attribute read.
    hooks: tuple = ()
    # Set by `describe_only` (the conformance suite's support probe): every op call then
    # creates (and caches) its descriptor and computes nothing.
    observer: Callable | None = None

    def __init__(self, name: str) -> None:
        CachedOp.instances.append(self)
        self.spec = _spec(name)
        self.name = name
        self.tensor_names = self.spec.tensors
        self.has_workspace = self.spec.workspace
        # One LRU cache per device: with one thread per device (tensor parallelism) no
        # thread ever evicts, or destroys, a descriptor another thread is using, and each
        # device keeps MAX_CACHED_DESCRIPTORS of its own however many devices there are.
        self._caches: dict[Device, OrderedDict[tuple, tuple[ctypes.c_void_p, int]]] = {}
        # Creation and eviction (rare) are serialized, so that two threads missing on one
        # signature at once (ranks sharing a device) create it once and leak nothing.
        self._lock = threading.Lock()
        self.created = 0  # descriptors created so far (tests and benchmarks watch this)
        self._fn = None  # the compute entry point, looked up once
        self._workspace: Workspace | None = None  # of the (device, thread) last used

    def descriptor(self, tensors: Sequence[Tensor], *params) -> tuple[ctypes.c_void_p, int]:
        # Runs on every op call of a forward (hundreds per decode step): identity checks
        # and one tuple per tensor, no Python-level hashing of Device objects per tensor.
        device = tensors[0].buffer.device
        for n, t in zip(self.tensor_names, tensors):
            if t is None:
                if n not in self.spec.optional:
                    raise ValueError(f"{self.name}: tensor {n} is required, got None")
                continue
            d = t.buffer.device
            if d is not device and d != device:
                raise ValueError(
                    f"{self.name}: tensor {n} is on {t.device}, expected {device}")
        # ctypes scalars are unhashable; their values are what the descriptor depends on.
        pkey = tuple(p.value if isinstance(p, ctypes._SimpleCData) else p
                     for p in params) if params else ()
        key = (tuple([None if t is None else (t.dtype, t.shape, t.strides)
                      for t in tensors]), pkey)
        cache = self._caches.get(device)
        if cache is not None:
            hit = cache.get(key)
            if hit is not None:
                try:
                    cache.move_to_end(key)
                except KeyError:  # evicted by another thread of this device meanwhile
                    pass
                return hit
        with self._lock:
            cache = self._caches.get(device)
            if cache is None:
                cache = self._caches[device] = OrderedDict()
            hit = cache.get(key)
            if hit is None:  # not created by another thread while this one waited
                hit = cache[key] = self._create(device, tensors, params)
                if len(cache) > MAX_CACHED_DESCRIPTORS:
                    # The least recently used one. Only threads of this device can be using
                    # it, and they would have moved it to the end: in the case that shares
                    # a device (ranks on the CPU) they run the same signatures in lockstep.
                    _, (old, _) = cache.popitem(last=False)
                    self._destroy(old)
        return hit

    def _create(self, device: Device, tensors: Sequence[Tensor],
                params: tuple) -> tuple[ctypes.c_void_p, int]:
        lib = load()
        if self.name not in lib.ops:
            raise NotExported(self.spec.create_fn, lib.root)
        handle = device.handle
        device.activate()
        descs = [None if t is None else tensor_descriptor(t) for t in tensors]
        try:
            op_desc = ctypes.c_void_p()
            status = getattr(lib.op, self.spec.create_fn)(
                handle, ctypes.byref(op_desc), *descs, *params)
            check(status, self.spec.create_fn,
                  lambda: describe(tensors, self.tensor_names)
                  + (f", params={params}" if params else "") + f", device={device}")
        finally:
            # The op descriptor keeps its own copy of shapes and strides.
            for d in descs:
                if d is not None:
                    lib.op.infiniopDestroyTensorDescriptor(d)
        size = ctypes.c_size_t(0)
        if self.spec.size_fn:
            check(getattr(lib.op, self.spec.size_fn)(op_desc, ctypes.byref(size)),
                  self.spec.size_fn)
        self.created += 1
        return op_desc, size.value

    def _destroy(self, desc: ctypes.c_void_p) -> None:
        getattr(load().op, self.spec.free_fn)(desc)

    def __call__(self, tensors: Sequence[Tensor], *compute_args, create_params: tuple = ()) -> None:
        """Run the op on `tensors` (in the C API's order), then the scalar arguments."""
        for hook in CachedOp.hooks:
            hook(self, tensors, compute_args, create_params)
        if CachedOp.observer is not None:
            self._describe(tensors, create_params)
            return
        if CACHE_DESCRIPTORS:
            desc, ws_size = self.descriptor(tensors, *create_params)
        else:
            desc, ws_size = self._create(tensors[0].device, tensors, create_params)
        try:
            self._compute(desc, ws_size, tensors, compute_args)
        finally:
            if not CACHE_DESCRIPTORS:
                self._destroy(desc)

    def _describe(self, tensors: Sequence[Tensor], create_params: tuple) -> None:
        """Create the descriptor and its workspace-size query, as a call would, and tell the
        observer the outcome: None, or the error the build answered (raised on)."""
        try:
            self.descriptor(tensors, *create_params)
        except (InfiniError, ValueError) as e:
            CachedOp.observer(self, tensors, create_params, e)
            raise
        CachedOp.observer(self, tensors, create_params, None)

    def _compute(self, desc: ctypes.c_void_p, ws_size: int, tensors: Sequence[Tensor],
                 compute_args: tuple) -> None:
        device = tensors[0].buffer.device
        device.activate()  # a no-op unless another device was used since
        fn = self._fn
        if fn is None:
            fn = self._fn = getattr(load().op, self.spec.compute_fn)
        ptrs = [None if t is None else t.buffer.ptr + t.offset * t.dtype.itemsize
                for t in tensors]
        if self.has_workspace:
            ws = self._workspace
            # One attribute read, then checks on the local: another thread may replace
            # self._workspace meanwhile, never the object this thread checked.
            if ws is None or ws.device is not device or ws.thread != get_ident():
                ws = self._workspace = Workspace.of(device)
            status = fn(desc, *ws.get(ws_size), *ptrs, *compute_args, _thread.stream)
        else:
            # The trailing argument is the stream: None is the device's default stream.
            status = fn(desc, *ptrs, *compute_args, _thread.stream)
        if status != 0:
            raise InfiniError(self.spec.compute_fn, status,
                              describe(tensors, self.tensor_names) + f", device={device}")

    @classmethod
    def named(cls, name: str) -> CachedOp:
        """The wrapper of the C op `name` (e.g. "Gemm"), for replaying a recorded call."""
        for op in cls.instances:
            if op.name == name:
                return op
        raise KeyError(f"no op wrapper for {name!r}; known: "
                       f"{sorted(op.name for op in cls.instances)}")

    def clear(self) -> None:
        """Destroy every cached descriptor (no op of this wrapper may be running)."""
        with self._lock:
            for cache in self._caches.values():
                while cache:
                    _, (desc, _) = cache.popitem()
                    self._destroy(desc)


@contextmanager
def describe_only(observer: Callable) -> Iterator[None]:
    """Within: op calls create their descriptors (cached as usual) and compute nothing, so
    outputs are left as they were. `observer(op, tensors, create_params, error)` is told
    every call's outcome, `error` None or the InfiniError (NotExported for an op the build
    lacks) the creation raised, which the call then raises. Not for concurrent threads:
    the mode is process-wide."""
    previous, CachedOp.observer = CachedOp.observer, observer
    try:
        yield
    finally:
        CachedOp.observer = previous


def descriptors_created() -> int:
    """Op descriptors created so far by all wrappers: a decode loop that creates none
    after its first step does no descriptor work per token."""
    return sum(op.created for op in CachedOp.instances)
