"""Devices by name, selection, synchronization and the per-device infiniop handle."""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

from .library import check, load

# infiniDevice_t, by the names users type.
DEVICE_TYPES: dict[str, int] = {
    "cpu": 0,
    "nvidia": 1,
    "cambricon": 2,
    "ascend": 3,
    "metax": 4,
    "moore": 5,
    "iluvatar": 6,
    "kunlun": 7,
    "sugon": 8,
}
_ALIASES = {"cuda": "nvidia", "gpu": "nvidia", "mlu": "cambricon", "npu": "ascend"}



class _ThreadState(threading.local):
    """infinirt keeps the current device in a C++ thread_local that starts as the CPU on
    every thread (src/infinirt/infinirt.cc), so our record of it is per thread too: a
    rank's thread must activate its own device, and one thread's switch must never make
    another skip its infinirtSetDevice."""

    current: tuple[int, int] | None = None  # (infiniDevice_t, index) set on this thread
    # The stream this thread's ops are issued on (an infinirtStream_t as an int); None is
    # the device's default stream. Captured steps need a stream of their own.
    stream: int | None = None


_state = _ThreadState()
_handles: dict[tuple[int, int], ctypes.c_void_p] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Device:
    """A device type and index, e.g. Device.parse('nvidia:0')."""

    type: str
    index: int = 0

    def __post_init__(self) -> None:
        if self.type not in DEVICE_TYPES:
            raise ValueError(
                f"unknown device type {self.type!r}; expected one of {sorted(DEVICE_TYPES)}"
            )
        if self.index < 0:
            raise ValueError(f"device index must be >= 0, got {self.index}")

    @classmethod
    def parse(cls, spec: str | Device) -> Device:
        if isinstance(spec, Device):
            return spec
        name, _, idx = str(spec).strip().lower().partition(":")
        name = _ALIASES.get(name, name)
        try:
            index = int(idx) if idx else 0
        except ValueError:
            raise ValueError(f"bad device index in {spec!r}; expected e.g. 'nvidia:0'") from None
        return cls(name, index)

    @property
    def code(self) -> int:
        return DEVICE_TYPES[self.type]

    def __str__(self) -> str:
        return f"{self.type}:{self.index}"

    def activate(self) -> None:
        """Make this the current device of the calling thread for infinirt calls (malloc,
        memcpy, handles, ops); each thread has its own, the CPU until it activates one."""
        key = (self.code, self.index)
        if _state.current == key:
            return
        count = device_count(self.type)
        if self.index >= count:
            raise ValueError(
                f"device {self} not available: this InfiniCore build sees {count} "
                f"{self.type} device(s)"
            )
        lib = load()
        check(lib.rt.infinirtSetDevice(self.code, self.index), "infinirtSetDevice", str(self))
        _state.current = key

    def free(self, ptr: int) -> None:
        """Release device memory without disturbing the current device: buffers are freed
        from garbage collection, which may run in the middle of work on another device
        (on whichever thread the collector runs: the device it restores is that thread's)."""
        previous = _state.current
        self.activate()
        try:
            load().rt.infinirtFree(ctypes.c_void_p(ptr))
        finally:  # also when the free fails: the interrupted thread keeps its device
            if previous is not None and previous != _state.current:
                load().rt.infinirtSetDevice(*previous)
                _state.current = previous

    def synchronize(self) -> None:
        self.activate()
        check(load().rt.infinirtDeviceSynchronize(), "infinirtDeviceSynchronize", str(self))

    @property
    def handle(self) -> ctypes.c_void_p:
        """The infiniop handle of this device, created once and kept for the process."""
        key = (self.code, self.index)
        with _lock:
            h = _handles.get(key)
            if h is None:
                self.activate()
                h = ctypes.c_void_p()
                check(load().op.infiniopCreateHandle(ctypes.byref(h)), "infiniopCreateHandle",
                      str(self))
                _handles[key] = h
        return h


def forget_current() -> None:
    """Forget which device the calling thread activated, so that its next activate()
    calls infinirtSetDevice again: for after a foreign library (NCCL's ncclCommInitAll)
    may have switched the thread's device behind infinirt's back."""
    _state.current = None


def device_count(device_type: str) -> int:
    """How many devices of this type the loaded InfiniCore build can use (0 if not built)."""
    lib = load()
    name = _ALIASES.get(device_type, device_type)
    if name not in DEVICE_TYPES:
        raise ValueError(
            f"unknown device type {device_type!r}; expected one of {sorted(DEVICE_TYPES)}")
    n = ctypes.c_int(0)
    status = lib.rt.infinirtGetDeviceCount(DEVICE_TYPES[name], ctypes.byref(n))
    # A backend that was not compiled in answers with an error rather than zero.
    return n.value if status == 0 else 0


def available_devices() -> list[str]:
    return [name for name in DEVICE_TYPES if device_count(name) > 0]


def current_stream() -> int | None:
    """The stream this thread's op calls go to (None: the default stream)."""
    return _state.stream


class stream_scope:
    """`with stream_scope(s):` issue this thread's ops on stream `s` (an int from
    `Stream`), then restore the previous one."""

    def __init__(self, stream: int | None) -> None:
        self.stream = stream

    def __enter__(self) -> int | None:
        self.previous, _state.stream = _state.stream, self.stream
        return self.stream

    def __exit__(self, *exc) -> None:
        _state.stream = self.previous


class Stream:
    """An infinirt stream of a device (infinirtStreamCreate), destroyed when collected."""

    def __init__(self, device: Device) -> None:
        self.device = device
        device.activate()
        handle = ctypes.c_void_p()
        check(load().rt.infinirtStreamCreate(ctypes.byref(handle)), "infinirtStreamCreate",
              str(device))
        self.handle: int = handle.value or 0

    def synchronize(self) -> None:
        self.device.activate()
        check(load().rt.infinirtStreamSynchronize(ctypes.c_void_p(self.handle)),
              "infinirtStreamSynchronize", str(self.device))

    def __del__(self) -> None:
        h, self.handle = getattr(self, "handle", 0), 0
        if h:
            try:
                self.device.activate()
                load().rt.infinirtStreamDestroy(ctypes.c_void_p(h))
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass
