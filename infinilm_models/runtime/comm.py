"""Collectives for tensor parallelism: all_reduce across ranks, one thread per rank.

    comm = make_communicator(["nvidia:0", "nvidia:1"])   # or ["cpu", "cpu"]
    # on rank r's thread (each thread works on its own device):
    comm.all_reduce(partial, out, "sum", rank=r)            # out = sum over ranks
    comm.all_reduce(partial, rank=r)                        # in place

Communicator            the interface, identical on every backend, so the model's
                        sharding code is the same on the CPU and on GPUs
InfiniCCLCommunicator   InfiniCCL (NCCL on NVIDIA): one comm per device in one process
                        (infinicclCommInitAll), or one process per rank (`init_rank`,
                        torchrun-style environment; needs an InfiniCore newer than 0.1.0)
LoopbackCommunicator    N ranks sharing ONE device in one process (the CPU, which has no
                        InfiniCCL backend): a barrier, then InfiniCore ops reduce in rank
                        order (rank 0 + rank 1 + ...), and every rank copies the result

Every rank must make the same calls in the same order (the collective contract). Time
spent in all_reduce is accumulated per rank (`stats(rank)`); with `timing=True` the device
is synchronized before and after each call, so the time is the all-reduce's own, not the
launch's; never by default (a synchronize per call would stall the pipeline).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .device import Device, forget_current
from .dtypes import DType
from .library import (
    INFINICCL_UNIQUE_ID_BYTES,
    InfinicclUniqueId,
    InfiniError,
    check,
    declare_ccl_init_rank,
    has_ccl_init_rank,
    load,
)
from .memory import DeviceBuffer
from .tensor import Tensor

# infinicclReduceOp_t
REDUCE_OPS: dict[str, int] = {"sum": 0, "prod": 1, "max": 2, "min": 3, "avg": 4}
# What InfiniCCL 0.1.0's NVIDIA backend accepts (CHECK_DTYPE in infiniccl_cuda.cu); the
# loopback takes the same, so that a program that runs on one runs on the other.
DTYPES = (DType.F32, DType.F16, DType.BF16)


class CommError(RuntimeError):
    """A collective could not complete: a rank failed, timed out or called differently."""


class MissingSymbol(InfiniError):
    """The loaded InfiniCore lacks a C function or library (an older release, a build
    without it): unsupported, as a status NOT_IMPLEMENTED would be, though nothing was
    called."""

    def __init__(self, call: str, message: str) -> None:
        super().__init__(call, 2)
        self.args = (f"{call}: {message}",)


@dataclass
class AllReduceStats:
    """all_reduce calls of one rank: how many, seconds spent in them, bytes reduced.
    Without `timing` the seconds are host time in the call (on a GPU: the launch)."""

    calls: int = 0
    seconds: float = 0.0
    bytes: int = 0


class Communicator:
    """`world_size` ranks; this process drives `ranks` of them, rank r on `device(r)`."""

    def __init__(self, world_size: int, devices: Mapping[int, Device], timing: bool) -> None:
        self.world_size = world_size
        self._devices = dict(devices)
        self.ranks: tuple[int, ...] = tuple(sorted(self._devices))
        self.timing = timing
        self._stats = {r: AllReduceStats() for r in self.ranks}

    def device(self, rank: int | None = None) -> Device:
        return self._devices[self._rank(rank)]

    def stats(self, rank: int | None = None) -> AllReduceStats:
        """The live counters of `rank` (a copy: `dataclasses.replace(comm.stats(r))`)."""
        return self._stats[self._rank(rank)]

    def reset_stats(self) -> None:
        for r in self.ranks:
            self._stats[r] = AllReduceStats()

    def all_reduce(self, tensor_in: Tensor, tensor_out: Tensor | None = None, op: str = "sum",
                   *, rank: int | None = None) -> Tensor:
        """Reduce `tensor_in` of every rank with `op` (sum, prod, max, min, avg) into
        `tensor_out` of every rank (None: in place, into tensor_in); returns tensor_out.
        Called on rank `rank`'s own thread (None: the only rank this process drives).
        Tensors: contiguous, f32/f16/bf16, on the rank's device, same shape on all ranks."""
        r = self._rank(rank)
        out = tensor_in if tensor_out is None else tensor_out
        self._check(tensor_in, out, op, r)
        device = self._devices[r]
        if self.timing:
            device.synchronize()  # earlier work is not the all-reduce's
        start = time.perf_counter()
        self._all_reduce(tensor_in, out, op, r)
        if self.timing:
            device.synchronize()
        st = self._stats[r]
        st.seconds += time.perf_counter() - start
        st.calls += 1
        st.bytes += tensor_in.numel * tensor_in.dtype.itemsize
        return out

    def close(self) -> None:
        """Release the communicator (no rank may be inside a call)."""

    def __enter__(self) -> Communicator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        devs = ", ".join(f"{r}: {d}" for r, d in self._devices.items())
        return f"{type(self).__name__}(world_size={self.world_size}, ranks {{{devs}}})"

    # -- for the implementations ----------------------------------------------------------

    def _all_reduce(self, tensor_in: Tensor, tensor_out: Tensor, op: str, rank: int) -> None:
        raise NotImplementedError

    def _supports(self, op: str) -> None:
        """Raise NotImplementedError for a reduce op this implementation cannot do."""

    def _rank(self, rank: int | None) -> int:
        if rank is None:
            if len(self.ranks) != 1:
                raise ValueError(f"this communicator drives ranks {list(self.ranks)} in one "
                                 "process: pass rank=")
            return self.ranks[0]
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise TypeError(f"rank must be an int, got {rank!r}")
        if rank not in self._devices:
            raise ValueError(f"rank {rank} is not driven here; ranks: {list(self.ranks)} "
                             f"of world size {self.world_size}")
        return rank

    def _check(self, x: Tensor, out: Tensor, op: str, rank: int) -> None:
        if op not in REDUCE_OPS:
            raise ValueError(f"unknown reduce op {op!r}; expected one of {list(REDUCE_OPS)}")
        self._supports(op)
        device = self._devices[rank]
        for name, t in (("tensor_in", x), ("tensor_out", out)):
            if not isinstance(t, Tensor):
                raise TypeError(f"all_reduce: {name} must be a Tensor, got {type(t).__name__}")
            if t.dtype not in DTYPES:
                raise ValueError(f"all_reduce: {name} is {t.dtype.short}; supported: "
                                 + ", ".join(d.short for d in DTYPES))
            if not t.is_contiguous():
                raise ValueError(f"all_reduce: {name} must be contiguous, got {t.describe()}")
            if t.device != device:
                raise ValueError(f"all_reduce: {name} is on {t.device}, rank {rank} on {device}")
        if out.shape != x.shape or out.dtype != x.dtype:
            raise ValueError(f"all_reduce: tensor_out {out.describe()} differs from tensor_in "
                             f"{x.describe()}")
        a, b = x.data_ptr, out.data_ptr
        n = x.numel * x.dtype.itemsize
        if a != b and a < b + n and b < a + n:
            raise ValueError("all_reduce: tensor_out partly overlaps tensor_in (in place "
                             "needs the very same tensor)")


# -- InfiniCCL --------------------------------------------------------------------------------


def _ccl_library():
    lib = load()
    if lib.ccl is None:
        why = (f"it did not load: {lib.ccl_error}" if lib.ccl_error
               else "this InfiniCore install has no InfiniCCL library")
        raise MissingSymbol("libinfiniccl.so", f"in {lib.root / 'lib'}: {why}")
    return lib.ccl


class InfiniCCLCommunicator(Communicator):
    """InfiniCCL: `InfiniCCLCommunicator(["nvidia:0", "nvidia:1"])` makes one comm per
    device in this process (infinicclCommInitAll); rank r is devices[r] and must be driven
    by its own thread (0.1.0 exports no group calls, and NCCL needs a thread per device
    without them). A backend without InfiniCCL (the CPU; an NVIDIA build made without
    --ccl) raises InfiniError with `.unsupported` true. `ccl`: the library to call (a
    stand-in in tests); default the loaded libinfiniccl."""

    def __init__(self, devices: Sequence[Device | str], *, timing: bool = False,
                 ccl=None) -> None:
        devs = [Device.parse(d) for d in devices]
        if not devs:
            raise ValueError("InfiniCCLCommunicator needs at least one device")
        if len({d.type for d in devs}) != 1:
            raise ValueError(f"all ranks must be on one device type, got {[str(d) for d in devs]}")
        if len(set(devs)) != len(devs):
            raise ValueError(f"one device per rank, got {[str(d) for d in devs]}; ranks "
                             "sharing a device: LoopbackCommunicator")
        self._ccl = _ccl_library() if ccl is None else ccl
        n = len(devs)
        comms = (ctypes.c_void_p * n)()
        ids = (ctypes.c_int * n)(*[d.index for d in devs])
        status = self._ccl.infinicclCommInitAll(devs[0].code, comms, n, ids)
        # NCCL's init switches CUDA devices itself; whatever it left current, the next
        # activate() on this thread sets ours again.
        forget_current()
        check(status, "infinicclCommInitAll", lambda: f"devices {[str(d) for d in devs]}"
              + ("" if status != 5 else f"; this InfiniCore build has no InfiniCCL backend for "
                 f"{devs[0].type} (the CPU has none; NVIDIA: build with --ccl)"))
        super().__init__(n, dict(enumerate(devs)), timing)
        self._comms: dict[int, int | None] = {r: comms[r] for r in range(n)}

    # -- one process per rank -------------------------------------------------------------

    @staticmethod
    def supports_init_rank(ccl=None) -> bool:
        """Whether the library exports infinicclGetUniqueId/infinicclCommInitRank (not
        InfiniCore 0.1.0)."""
        lib = load().ccl if ccl is None else ccl
        return has_ccl_init_rank(lib)

    @classmethod
    def init_rank(cls, device: Device | str = "nvidia", *, rank: int | None = None,
                  world_size: int | None = None, timeout: float = 300.0,
                  timing: bool = False, ccl=None,
                  environ: Mapping[str, str] | None = None) -> InfiniCCLCommunicator:
        """This process's rank of a job started one process per rank (torchrun-style):
        RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT from the environment
        (`rank`/`world_size` override). `device`: a type ("nvidia": index LOCAL_RANK) or a
        device ("nvidia:3"). Rank 0 makes the unique id (infinicclGetUniqueId) and hands it
        to the others over TCP on MASTER_ADDR (see `rendezvous_port`); then every rank
        calls infinicclCommInitRank, which returns once all have joined."""
        env = os.environ if environ is None else environ
        lib = _ccl_library() if ccl is None else ccl
        if not has_ccl_init_rank(lib):
            where = getattr(lib, "_name", None) or "libinfiniccl.so"
            raise MissingSymbol(
                "infinicclCommInitRank",
                f"not exported by {where}; one process per rank needs an InfiniCore newer "
                "than 0.1.0 (infinicclGetUniqueId/infinicclCommInitRank); with 0.1.0 drive "
                "every device from one process: InfiniCCLCommunicator(devices), one thread "
                "per rank")
        rank = _env_int(env, "RANK") if rank is None else rank
        world_size = _env_int(env, "WORLD_SIZE") if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        dev = Device.parse(device)
        if isinstance(device, str) and ":" not in device:
            dev = Device(dev.type, _env_int(env, "LOCAL_RANK", rank))
        declare_ccl_init_rank(lib)
        dev.activate()  # both calls take the device type from this thread's device
        uid = InfinicclUniqueId()
        server = None
        if rank == 0:
            check(lib.infinicclGetUniqueId(ctypes.byref(uid)), "infinicclGetUniqueId", str(dev))
            if world_size > 1:
                server = _IdServer(bytes(uid), world_size, rendezvous_address(env)[1], timeout)
        else:
            addr, port = rendezvous_address(env)
            ctypes.memmove(ctypes.byref(uid), _fetch_id(addr, port, world_size, timeout),
                           INFINICCL_UNIQUE_ID_BYTES)
        comm = ctypes.c_void_p()
        try:
            check(lib.infinicclCommInitRank(ctypes.byref(comm), world_size, uid, rank),
                  "infinicclCommInitRank", f"rank {rank} of {world_size} on {dev}")
        finally:
            if server is not None:
                server.stop()
        forget_current()
        self = cls.__new__(cls)
        Communicator.__init__(self, world_size, {rank: dev}, timing)
        self._ccl = lib
        self._comms = {rank: comm.value}
        return self

    # -- the collective -------------------------------------------------------------------

    def _all_reduce(self, x: Tensor, out: Tensor, op: str, rank: int) -> None:
        comm = self._comms.get(rank)
        if comm is None:
            raise CommError(f"rank {rank}: the communicator is closed")
        device = self._devices[rank]
        device.activate()
        status = self._ccl.infinicclAllReduce(x.data_ptr, out.data_ptr, x.numel, int(x.dtype),
                                              REDUCE_OPS[op], comm, None)
        if status != 0:
            raise InfiniError("infinicclAllReduce", status,
                              f"{op} of {x.describe()} on rank {rank} ({device})")

    def close(self) -> None:
        for r, comm in list(self._comms.items()):
            if comm is not None:
                self._comms[r] = None
                self._devices[r].activate()
                check(self._ccl.infinicclCommDestroy(comm), "infinicclCommDestroy", f"rank {r}")


def _env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None:
        if default is None:
            raise ValueError(f"${name} is not set (one process per rank is started by a "
                             "launcher such as torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK, "
                             "MASTER_ADDR and MASTER_PORT)")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name}={value!r} is not an integer") from None


def rendezvous_address(env: Mapping[str, str]) -> tuple[str, int]:
    """Where rank 0 hands out the unique id: MASTER_ADDR and $INFINILM_CCL_PORT if set, else
    MASTER_PORT, except under torchrun's agent store (TORCHELASTIC_USE_AGENT_STORE=True:
    the launcher itself listens on MASTER_PORT), where MASTER_PORT + 1."""
    addr = env.get("MASTER_ADDR")
    if not addr:
        raise ValueError("$MASTER_ADDR is not set: the address of rank 0's host")
    if env.get("INFINILM_CCL_PORT"):
        return addr, _env_int(env, "INFINILM_CCL_PORT")
    port = _env_int(env, "MASTER_PORT")
    if env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true":
        port += 1
    return addr, port


_MAGIC = b"INFCCLID"
_HEADER = struct.Struct("!8sI")  # magic, world size


class _IdServer:
    """Rank 0's side of the rendezvous: a thread that hands the unique id to every peer
    that connects, until the comm is made (all ranks joined) or the timeout."""

    def __init__(self, uid: bytes, world_size: int, port: int, timeout: float) -> None:
        self.payload = _HEADER.pack(_MAGIC, world_size) + uid
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind(("", port))
        except OSError as e:
            self.sock.close()
            raise CommError(
                f"rank 0 cannot listen on port {port} for the InfiniCCL rendezvous ({e}); set "
                "INFINILM_CCL_PORT to a free port (the same for every rank)") from e
        self.sock.listen(max(world_size, 8))
        self.sock.settimeout(0.2)
        self.deadline = time.monotonic() + timeout
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="infiniccl-rendezvous",
                                       daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                try:
                    conn, _ = self.sock.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(5.0)
                    try:
                        conn.sendall(self.payload)
                    except OSError:
                        pass  # that peer is gone; a real rank retries
        finally:
            self.sock.close()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()


def _fetch_id(addr: str, port: int, world_size: int, timeout: float) -> bytes:
    """A non-zero rank's side: connect to rank 0 (retrying until it listens) and read the id."""
    deadline = time.monotonic() + timeout
    size = _HEADER.size + INFINICCL_UNIQUE_ID_BYTES
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((addr, port), timeout=5.0) as conn:
                data = b""
                while len(data) < size:
                    chunk = conn.recv(size - len(data))
                    if not chunk:
                        break
                    data += chunk
            if len(data) == size:
                magic, peer_world = _HEADER.unpack(data[:_HEADER.size])
                if magic != _MAGIC:
                    raise CommError(f"{addr}:{port} is not an InfiniCCL rendezvous (another "
                                    "service on that port?); set INFINILM_CCL_PORT")
                if peer_world != world_size:
                    raise CommError(f"rank 0 has world size {peer_world}, this rank "
                                    f"{world_size}")
                return data[_HEADER.size:]
            last = CommError(f"short read ({len(data)} of {size} bytes)")
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise CommError(f"no InfiniCCL unique id from rank 0 at {addr}:{port} within {timeout} s "
                    f"(last error: {last})")


# -- loopback ---------------------------------------------------------------------------------


class LoopbackCommunicator(Communicator):
    """`world_size` ranks on ONE device (the CPU case), one thread per rank. all_reduce:
    every rank's input is posted and the ranks meet at a barrier; rank 0 reduces with
    InfiniCore ops in rank order, (((x0 + x1) + x2) + ...), rounding to the dtype after
    each step, so results are reproducible run to run; after a second barrier every rank
    copies the result into its output (ops.rearrange). sum (ops.add) and prod (ops.mul)
    only: InfiniCore 0.1.0 has no elementwise max/min op and no scaling op for avg.
    A rank that does not arrive within `timeout` seconds breaks the communicator."""

    SUPPORTED = ("sum", "prod")

    def __init__(self, world_size: int, device: Device | str = "cpu", *,
                 timing: bool = False, timeout: float | None = 300.0) -> None:
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        dev = Device.parse(device)
        super().__init__(world_size, {r: dev for r in range(world_size)}, timing)
        self.timeout = timeout
        self._barrier = threading.Barrier(world_size, timeout=timeout)
        self._posted: list[tuple[Tensor, str] | None] = [None] * world_size
        self._scratch: DeviceBuffer | None = None
        self._result: Tensor | None = None
        self._error: BaseException | None = None

    def _supports(self, op: str) -> None:
        if op not in self.SUPPORTED:
            why = ("no scaling op for the division by the world size" if op == "avg"
                   else f"no elementwise {op} op")
            raise NotImplementedError(
                f"LoopbackCommunicator: all_reduce op {op!r} is not implemented: InfiniCore "
                f"0.1.0 has {why}; supported: {', '.join(self.SUPPORTED)}")

    def _wait(self, rank: int) -> None:
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            raise CommError(
                f"all_reduce on rank {rank}: not every rank arrived within {self.timeout} s, "
                "or the communicator was closed; every rank must call all_reduce the same "
                "number of times (this communicator is unusable now)") from None

    def _all_reduce(self, x: Tensor, out: Tensor, op: str, rank: int) -> None:
        from . import ops

        if self.world_size == 1:
            if out.data_ptr != x.data_ptr:
                ops.rearrange(out, x)
            return
        self._posted[rank] = (x, op)
        self._wait(rank)  # every input is posted
        if rank == 0:
            try:
                self._error = None
                self._result = self._reduce()
            except BaseException as e:  # noqa: BLE001 - handed to every rank below
                self._error = e
            finally:
                self._posted = [None] * self.world_size
        self._wait(rank)  # the result (or rank 0's error) is there
        err = self._error
        if err is not None:
            if rank == 0:
                raise err
            raise CommError(f"all_reduce failed on rank 0: {err}") from err
        # Nothing else is written to the result before every rank is back at the first
        # barrier of the next call, so the copies need no third barrier.
        ops.rearrange(out, self._result)

    def _reduce(self) -> Tensor:
        from . import ops

        posted = self._posted
        x0, op = posted[0]
        for r, (x, op_r) in enumerate(posted):
            if op_r != op:
                raise CommError(f"ranks disagree on the op: rank 0 {op!r}, rank {r} {op_r!r}")
            if x.shape != x0.shape or x.dtype != x0.dtype:
                raise CommError(f"ranks disagree on the tensor: rank 0 {x0.describe()}, "
                                f"rank {r} {x.describe()}")
        nbytes = x0.numel * x0.dtype.itemsize
        if self._scratch is None or self._scratch.nbytes < nbytes:
            self._scratch = None
            self._scratch = DeviceBuffer(x0.device, nbytes)
        acc = Tensor(self._scratch, x0.dtype, x0.shape)
        fn = ops.add if op == "sum" else ops.mul
        fn(acc, x0, posted[1][0])
        for x, _ in posted[2:]:
            fn(acc, acc, x)
        return acc

    def close(self) -> None:
        self._barrier.abort()
        self._scratch = self._result = None


def make_communicator(devices: Sequence[Device | str], *, timing: bool = False
                      ) -> Communicator:
    """One rank per entry of `devices`: the same device for all (e.g. ["cpu"] * 2) gives a
    LoopbackCommunicator, distinct devices of one type an InfiniCCLCommunicator."""
    devs = [Device.parse(d) for d in devices]
    if devs and len(set(devs)) == 1:
        return LoopbackCommunicator(len(devs), devs[0], timing=timing)
    return InfiniCCLCommunicator(devs, timing=timing)
