"""Captured steps: a sequence of op calls issued once into a device graph and replayed.

    step = CapturedStep(device, stream, fn)      # fn issues ops (on `stream`)
    step.capture()                               # record; fn's ops are not executed
    step.replay()                                # run them all, one launch per segment

Which API captures is the build's answer (`Build.graph_runtime`, read from its exports
and the libraries it links): where it exports infinirt's capture API (upstream InfiniCore:
implemented for CUDA, MetaX and Ascend), steps are captured through it, vendor-neutral.
InfiniCore 0.1.0 has no graph API; a build of it that links the CUDA runtime gets that
runtime's stream capture (cudaStreamBeginCapture ... cudaGraphLaunch) from the libcudart
it links. Whether a device's streams take the API is the device's answer to one empty
capture. Another backend plugs in its own `GraphBackend`; a device without one has
`graph_backend(device) is None` and callers keep their eager path.

An op that cannot be captured on a backend (one that copies from pageable host memory or
synchronizes inside its call) splits the step: the ops before it form one graph, it runs
eagerly at its place on replay, and capture resumes after it. Which ops those are is
measured, not assumed: the conformance suite captures each op's call alone and compares
its replay with a direct call (conformance/ops/test_op_capture.py), and the model passes
the names that failed as `eager_ops`.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterable

from .device import Device, stream_scope
from .ops._base import CachedOp, Workspace

CAPTURE_THREAD_LOCAL = 1  # cudaStreamCaptureModeThreadLocal: other threads may use CUDA


class GraphError(RuntimeError):
    pass


class GraphBackend:
    """begin/end a capture on a stream, instantiate, launch, destroy."""

    name = "?"

    def begin(self, stream: int) -> None:
        raise NotImplementedError

    def end(self, stream: int) -> int:
        raise NotImplementedError

    def instantiate(self, graph: int) -> int:
        raise NotImplementedError

    def launch(self, exec_: int, stream: int) -> None:
        raise NotImplementedError

    def destroy(self, graph: int, exec_: int) -> None:
        raise NotImplementedError


class CudaGraphs(GraphBackend):
    name = "cudart"

    def __init__(self, lib: ctypes.CDLL) -> None:
        P, PP = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
        self.lib = lib
        for name, args in (("cudaStreamBeginCapture", [P, ctypes.c_int]),
                           ("cudaStreamEndCapture", [P, PP]),
                           ("cudaGraphInstantiate", [PP, P, ctypes.c_ulonglong]),
                           ("cudaGraphLaunch", [P, P]), ("cudaGraphExecDestroy", [P]),
                           ("cudaGraphDestroy", [P]), ("cudaGetLastError", [])):
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, ctypes.c_int
        lib.cudaGetErrorString.argtypes, lib.cudaGetErrorString.restype = [ctypes.c_int], \
            ctypes.c_char_p

    def _check(self, status: int, call: str) -> None:
        if status != 0:
            self.lib.cudaGetLastError()  # clear the sticky error of a failed capture
            raise GraphError(f"{call} failed: {self.lib.cudaGetErrorString(status).decode()} "
                             f"({status})")

    def begin(self, stream: int) -> None:
        self._check(self.lib.cudaStreamBeginCapture(stream, CAPTURE_THREAD_LOCAL),
                    "cudaStreamBeginCapture")

    def end(self, stream: int) -> int:
        g = ctypes.c_void_p()
        self._check(self.lib.cudaStreamEndCapture(stream, ctypes.byref(g)),
                    "cudaStreamEndCapture")
        return g.value or 0

    def instantiate(self, graph: int) -> int:
        e = ctypes.c_void_p()
        self._check(self.lib.cudaGraphInstantiate(ctypes.byref(e), graph, 0),
                    "cudaGraphInstantiate")
        return e.value or 0

    def launch(self, exec_: int, stream: int) -> None:
        self._check(self.lib.cudaGraphLaunch(exec_, stream), "cudaGraphLaunch")

    def destroy(self, graph: int, exec_: int) -> None:
        if exec_:
            self.lib.cudaGraphExecDestroy(exec_)
        if graph:
            self.lib.cudaGraphDestroy(graph)


class InfinirtGraphs(GraphBackend):
    """infinirt's own capture API: the same calls on every backend that implements it."""

    name = "infinirt"

    def __init__(self, rt: ctypes.CDLL) -> None:
        self.rt = rt

    def _check(self, status: int, call: str) -> None:
        if status != 0:
            from .library import STATUS_NAMES

            raise GraphError(f"{call} failed: {STATUS_NAMES.get(status, status)} ({status})")

    def begin(self, stream: int) -> None:
        self._check(self.rt.infinirtStreamBeginCapture(stream, CAPTURE_THREAD_LOCAL),
                    "infinirtStreamBeginCapture")

    def end(self, stream: int) -> int:
        g = ctypes.c_void_p()
        self._check(self.rt.infinirtStreamEndCapture(stream, ctypes.byref(g)),
                    "infinirtStreamEndCapture")
        return g.value or 0

    def instantiate(self, graph: int) -> int:
        e = ctypes.c_void_p()
        self._check(self.rt.infinirtGraphInstantiate(ctypes.byref(e), graph, None, None, 0),
                    "infinirtGraphInstantiate")
        return e.value or 0

    def launch(self, exec_: int, stream: int) -> None:
        self._check(self.rt.infinirtGraphLuanch(exec_, stream), "infinirtGraphLuanch")

    def destroy(self, graph: int, exec_: int) -> None:
        if exec_:
            self.rt.infinirtGraphExecDestroy(exec_)
        if graph:
            self.rt.infinirtGraphDestroy(graph)


_backends: dict[str, GraphBackend | None] = {}


def graph_backend(device: Device) -> GraphBackend | None:
    """The graph API of this device's backend, or None (then run steps eagerly)."""
    if device.type not in _backends:
        _backends[device.type] = _find_backend(device)
    return _backends[device.type]


def _find_backend(device: Device) -> GraphBackend | None:
    """The build says whose capture API there is (`Build.graph_runtime`); the device says
    whether its streams take it: a device whose infinirt streams are null (the host's ops
    run synchronously) has nothing to capture, and one whose backend answers an empty
    capture with an error (infinirt's stubs answer DEVICE_TYPE_NOT_SUPPORTED) has none."""
    from .device import Stream
    from .library import load

    lib = load()
    runtime = lib.build.graph_runtime
    if runtime is None:
        return None
    stream = Stream(device)
    if not stream.handle:
        return None
    try:
        backend: GraphBackend = (InfinirtGraphs(lib.rt) if runtime == "infinirt"
                                 else CudaGraphs(ctypes.CDLL(runtime)))
    except (OSError, AttributeError):
        return None
    try:
        backend.begin(stream.handle)
        backend.destroy(backend.end(stream.handle), 0)
    except GraphError:
        return None
    return backend


class _Session(threading.local):
    step: CapturedStep | None = None


_session = _Session()


def _hook(op: CachedOp, tensors, compute_args, create_params) -> None:
    """Runs before every op call: during a capture, starts a graph segment, or ends one
    and records an op that must run eagerly."""
    step = _session.step
    if step is None or step._recording is False:
        return
    if op.name in step.eager_ops:
        step._end_segment()
        step._segments.append(("eager", (op, list(tensors), compute_args, create_params)))
    elif not step._capturing:
        step._begin_segment()


class CapturedStep:
    """`fn`'s op calls, captured on `stream` and replayed (see the module docstring)."""

    def __init__(self, device: Device, stream, fn: Callable[[], None],
                 eager_ops: Iterable[str] = ()) -> None:
        backend = graph_backend(device)
        if backend is None:
            raise GraphError(f"{device.type} has no graph API here")
        self.device, self.stream, self.fn = device, stream, fn
        self.backend = backend
        self.eager_ops = frozenset(eager_ops)
        self._segments: list[tuple[str, object]] = []
        self._capturing = False
        self._recording = False
        self._pinned = False  # holds one count of Workspace.pinned while graphs exist

    @property
    def graphs(self) -> int:
        return sum(1 for kind, _ in self._segments if kind == "graph")

    @property
    def eager_calls(self) -> int:
        return sum(1 for kind, _ in self._segments if kind == "eager")

    def _begin_segment(self) -> None:
        self.backend.begin(self.stream.handle)
        self._capturing = True

    def _end_segment(self) -> None:
        if not self._capturing:
            return
        self._capturing = False
        graph = self.backend.end(self.stream.handle)
        self._segments.append(("graph", (graph, self.backend.instantiate(graph))))

    def capture(self) -> CapturedStep:
        """Record fn once. Its ops are not executed (replay does that); outputs of the
        eager ops seen here are garbage and overwritten at the first replay."""
        if CachedOp.hooks.count(_hook) == 0:
            CachedOp.hooks = CachedOp.hooks + (_hook,)
        if not self._pinned:  # graphs keep pointing at this workspace
            Workspace.pinned += 1
            self._pinned = True
        _session.step, self._recording = self, True
        try:
            with stream_scope(self.stream.handle):
                self.fn()
            self._end_segment()
        except BaseException:
            if self._capturing:
                self._capturing = False
                try:
                    self.backend.end(self.stream.handle)
                except GraphError:
                    pass
            self.close()  # the segments captured so far, and the workspace pin
            raise
        finally:
            _session.step, self._recording = None, False
        return self

    def replay(self) -> None:
        with stream_scope(self.stream.handle):
            for kind, item in self._segments:
                if kind == "graph":
                    self.backend.launch(item[1], self.stream.handle)
                else:
                    op, tensors, compute_args, create_params = item
                    op(tensors, *compute_args, create_params=create_params)

    def close(self) -> None:
        for kind, item in self._segments:
            if kind == "graph":
                self.backend.destroy(*item)
        self._segments = []
        if self._pinned:
            self._pinned = False
            Workspace.pinned -= 1
            if Workspace.pinned == 0:  # no graph points at an outgrown workspace any more
                Workspace.retired.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

