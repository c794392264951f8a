"""Device memory through infinirt: allocation, release and copies."""

from __future__ import annotations

import ctypes
import enum
import threading

from .device import Device
from .library import check, load


class MemcpyKind(enum.IntEnum):
    H2H = 0
    H2D = 1
    D2H = 2
    D2D = 3


# Bytes held by live DeviceBuffers per device, and the high-water mark since the last reset:
# infinirt has no allocator statistics, and benchmarks report peak device memory.
_live: dict[Device, int] = {}
_peak: dict[Device, int] = {}
# Threads of one device (ranks sharing the CPU) update the same entries. Reentrant: a
# buffer's __del__ may run from a garbage collection on a thread inside the lock.
_count_lock = threading.RLock()


def allocated_bytes(device: Device) -> int:
    """Bytes currently held by DeviceBuffers on `device` (weights, caches, workspaces)."""
    return _live.get(device, 0)


def max_allocated_bytes(device: Device) -> int:
    """High-water mark of allocated_bytes since the process start or reset_peak."""
    return _peak.get(device, 0)


def reset_peak(device: Device) -> None:
    _peak[device] = _live.get(device, 0)


class DeviceBuffer:
    """An owning allocation of `nbytes` on `device`, released when garbage collected."""

    __slots__ = ("device", "nbytes", "ptr", "_lib", "__weakref__")

    def __init__(self, device: Device, nbytes: int) -> None:
        if nbytes < 0:
            raise ValueError(f"cannot allocate a negative size ({nbytes} bytes)")
        self.device = device
        self.nbytes = nbytes
        self._lib = load()
        device.activate()
        p = ctypes.c_void_p()
        # infinirtMalloc(0) is backend-defined; one byte keeps pointers valid and distinct.
        check(self._lib.rt.infinirtMalloc(ctypes.byref(p), max(nbytes, 1)), "infinirtMalloc",
              lambda: f"{nbytes} bytes on {device}")
        self.ptr: int = p.value or 0
        with _count_lock:
            live = _live[device] = _live.get(device, 0) + nbytes
            if live > _peak.get(device, 0):
                _peak[device] = live

    def __del__(self) -> None:
        ptr, self.ptr = getattr(self, "ptr", 0), 0
        if ptr:
            try:
                with _count_lock:
                    _live[self.device] = _live.get(self.device, 0) - self.nbytes
                self.device.free(ptr)
            except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to report to
                pass

    def __repr__(self) -> str:
        return f"DeviceBuffer({self.device}, {self.nbytes} bytes, 0x{self.ptr:x})"


def zero_fill(buffer: DeviceBuffer) -> None:
    """Set every byte to zero (infinirt has no memset: copy from a zeroed host array)."""
    import numpy as np

    zeros = np.zeros(buffer.nbytes, dtype=np.uint8)
    memcpy(buffer.ptr, zeros.ctypes.data, buffer.nbytes, MemcpyKind.H2D, buffer.device)


def memcpy(dst: int, src: int, nbytes: int, kind: MemcpyKind, device: Device) -> None:
    """Synchronous copy; `device` is the device side of H2D/D2H (or both sides of D2D)."""
    if nbytes == 0:
        return
    device.activate()
    check(load().rt.infinirtMemcpy(ctypes.c_void_p(dst), ctypes.c_void_p(src), nbytes, int(kind)),
          "infinirtMemcpy", lambda: f"{kind.name} {nbytes} bytes on {device}")
