"""Devices by name, selection, synchronization and the per-device infiniop handle.

Device names and codes are the build's: its installed include/infinicore.h
(capabilities.device_table; read without loading the library), so InfiniCore 0.1.0's
8 = sugon and upstream's 8 = hygon, 9 = qy, 10 = ali both hold. The names InfiniCore,
InfiniLM and the vendors' toolkits also use for a kind (KINDS: cuda, npu, mlu, musa,
xpu, dcu, ppu, ...) resolve to whichever of the kind's names the build has, so
`hygon`, `sugon` and `dcu` are the same device on either release.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

from .capabilities import DeviceTable, device_table
from .library import LibraryNotFound, check, find_root, load, loaded_root

# Each device kind by every name it goes by: the first is upstream InfiniCore's enum name
# (include/infinicore.h, lower-cased), then older enum names (0.1.0's SUGON), InfiniLM's
# and InfiniCore's test flags, xmake's backend words and the torch/toolkit device names.
KINDS: tuple[tuple[str, ...], ...] = (
    ("cpu",),
    ("nvidia", "cuda", "gpu", "nv"),
    ("cambricon", "mlu", "bang"),
    ("ascend", "npu"),
    ("metax", "maca"),
    ("moore", "musa", "mthreads"),
    ("iluvatar", "corex"),
    ("kunlun", "xpu"),
    ("hygon", "sugon", "dcu"),
    ("qy",),
    ("ali", "ppu"),
)
_KIND_OF = {name: kind for kind in KINDS for name in kind}


def kind_of(name: str) -> str:
    """The kind's canonical (upstream) name for any name of it, without asking a build:
    "sugon" -> "hygon", "cuda" -> "nvidia"; an unknown name is returned as it is."""
    n = name.strip().lower()
    kind = _KIND_OF.get(n)
    return kind[0] if kind else n


def backend_of(spec: str) -> str | None:
    """The backend (build) a device spec asks for, by its kind's upstream name and without
    asking any build ("sugon:1" -> "hygon"); None for a spec that names no word."""
    name = kind_of(str(spec).partition(":")[0])
    return name if name.isidentifier() else None


def _table() -> DeviceTable | None:
    """The device table of the build in hand (loaded, else the one discovery finds); None
    where there is no build yet (names then resolve by KINDS alone)."""
    root = loaded_root()
    if root is None:
        try:
            root = find_root()
        except LibraryNotFound:
            return None
    table = _tables.get(root)  # activate() asks on every call: no path resolution then
    if table is None:
        table = _tables[root] = device_table(root.resolve())
    return table


_tables: dict = {}


def _aliases(names) -> str:
    extra = sorted({a for n in names for a in _KIND_OF.get(n, ()) if a not in names})
    return f" (aliases: {', '.join(extra)})" if extra else ""


def resolve_type(name: str, table: DeviceTable | None = None) -> str:
    """`name` (any name of a kind) as the build names it: "hygon" is "sugon" on 0.1.0.
    ValueError in one line listing the names the build knows, for one it does not."""
    n = str(name).strip().lower()
    table = table if table is not None else _table()
    if table is None:
        if n in _KIND_OF:
            return _KIND_OF[n][0]
        known = [k[0] for k in KINDS]
        raise ValueError(f"unknown device type {name!r}; expected one of "
                         f"{', '.join(known)}{_aliases(known)}")
    if n in table.codes:
        return n
    for member in _KIND_OF.get(n, ()):
        if member in table.codes:
            return member
    raise ValueError(f"unknown device type {name!r} for this InfiniCore build (device types "
                     f"from {table.source}); it knows: {', '.join(table.names)}"
                     f"{_aliases(table.names)}")


def device_types() -> dict[str, int]:
    """infiniDevice_t of the build in hand: name -> code."""
    table = _table()
    if table is None:
        raise LibraryNotFound("no InfiniCore build found to read its device types from")
    return dict(table.codes)


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
        object.__setattr__(self, "type", resolve_type(self.type))
        if self.index < 0:
            raise ValueError(f"device index must be >= 0, got {self.index}")

    @classmethod
    def parse(cls, spec: str | Device) -> Device:
        if isinstance(spec, Device):
            return spec
        name, _, idx = str(spec).strip().lower().partition(":")
        try:
            index = int(idx) if idx else 0
        except ValueError:
            raise ValueError(f"bad device index in {spec!r}; expected e.g. 'nvidia:0'") from None
        return cls(name, index)

    @property
    def code(self) -> int:
        """infiniDevice_t of this type in the build in hand."""
        table = _table()
        if table is None:
            raise LibraryNotFound("no InfiniCore build found to read device codes from")
        code = table.codes.get(self.type)
        return code if code is not None else table.codes[resolve_type(self.type, table)]

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
    code = device_types()[resolve_type(device_type)]
    n = ctypes.c_int(0)
    status = lib.rt.infinirtGetDeviceCount(code, ctypes.byref(n))
    # A backend that was not compiled in answers with an error rather than zero.
    return n.value if status == 0 else 0


def available_devices() -> list[str]:
    return [name for name in device_types() if device_count(name) > 0]


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
