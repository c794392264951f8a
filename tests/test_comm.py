"""runtime.comm: the loopback all-reduce on the CPU (against numpy, in rank order), the
InfiniCCL binding against a stand-in library (the CPU build has no InfiniCCL backend),
and the one-process-per-rank launcher wiring (symbol detection, TCP rendezvous)."""

from __future__ import annotations

import ctypes
import gc
import itertools
import os
import socket
import threading
from types import SimpleNamespace

import ml_dtypes
import numpy as np
import pytest

from infinilm_models.runtime import Device, InfiniError, Tensor, device, library, load
from infinilm_models.runtime import comm as comm_module
from infinilm_models.runtime.capabilities import current_build
from infinilm_models.runtime.comm import (
    CommError,
    InfiniCCLCommunicator,
    LoopbackCommunicator,
    MissingSymbol,
    make_communicator,
    rendezvous_address,
)
from infinilm_models.runtime.dtypes import DType


def run_ranks(n: int, fn) -> list:
    """fn(rank) on one thread per rank; the results, or each rank's exception."""
    out: list = [None] * n

    def body(r: int) -> None:
        try:
            out[r] = fn(r)
        except BaseException as e:  # noqa: BLE001 - returned for the test to inspect
            out[r] = e

    threads = [threading.Thread(target=body, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    return out


def raise_any(results: list) -> list:
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def inputs(n: int, size: int, dtype: str, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(size).astype(DType.parse(dtype).numpy) for _ in range(n)]


def rank_order(xs: list[np.ndarray], op: str) -> np.ndarray:
    """(((x0 op x1) op x2) ...) computed in float32 and rounded to the dtype at each step,
    as InfiniCore's CPU add/mul do (bf16 rounds to nearest even)."""
    fn = np.add if op == "sum" else np.multiply
    acc = xs[0]
    for x in xs[1:]:
        acc = fn(acc.astype(np.float32), x.astype(np.float32)).astype(xs[0].dtype)
    return acc


# -- loopback ---------------------------------------------------------------------------------


@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "in_place"])
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("world", [2, 4])
def test_loopback_sum(world: int, dtype: str, inplace: bool) -> None:
    xs = inputs(world, 1001, dtype)
    comm = LoopbackCommunicator(world, "cpu")
    ts = [Tensor.from_numpy(x, "cpu") for x in xs]

    def rank(r: int) -> np.ndarray:
        out = None if inplace else Tensor.empty(ts[r].shape, dtype, "cpu")
        got = comm.all_reduce(ts[r], out, "sum", rank=r)
        assert got is (ts[r] if inplace else out)
        return got.numpy()

    outs = raise_any(run_ranks(world, rank))
    expected = rank_order(xs, "sum")
    for r in range(world):
        assert outs[r].dtype == xs[0].dtype
        np.testing.assert_array_equal(outs[r], expected)  # bit for bit: rank order
        if not inplace:
            np.testing.assert_array_equal(ts[r].numpy(), xs[r])  # inputs untouched
    exact = np.sum(np.stack(xs).astype(np.float64), axis=0)
    tol = 1e-5 if dtype == "f32" else 0.1
    np.testing.assert_allclose(outs[0].astype(np.float64), exact, atol=tol, rtol=tol)
    st = comm.stats(1)
    assert (st.calls, st.bytes) == (1, xs[0].nbytes) and st.seconds > 0


def test_loopback_is_deterministic_and_in_rank_order() -> None:
    """bf16 rounding at every step makes the order visible: the result is the rank-order
    one, identical on every rank and in every repetition (not whichever rank came first)."""
    world = 4
    xs = inputs(world, 4096, "bf16", seed=3)
    assert not np.array_equal(rank_order(xs, "sum"), rank_order(xs[::-1], "sum"))
    comm = LoopbackCommunicator(world)
    ts = [Tensor.from_numpy(x, "cpu") for x in xs]
    outs = [Tensor.empty((4096,), "bf16", "cpu") for _ in range(world)]

    def rank(r: int) -> list[np.ndarray]:
        res = []
        for _ in range(5):
            res.append(comm.all_reduce(ts[r], outs[r], rank=r).numpy())
        return res

    results = raise_any(run_ranks(world, rank))
    expected = rank_order(xs, "sum")
    for res in results:
        for out in res:
            np.testing.assert_array_equal(out, expected)
    assert comm.stats(0).calls == 5


def test_loopback_prod() -> None:
    xs = [(1 + 0.1 * x).astype(np.float32) for x in inputs(3, 576, "f32", seed=1)]
    comm = LoopbackCommunicator(3)
    ts = [Tensor.from_numpy(x, "cpu") for x in xs]
    outs = raise_any(run_ranks(3, lambda r: comm.all_reduce(ts[r], op="prod", rank=r).numpy()))
    for out in outs:
        np.testing.assert_array_equal(out, rank_order(xs, "prod"))


def test_loopback_matrix_and_repeated_shapes() -> None:
    """2-D activations, calls of changing shape on one communicator, world size 1."""
    comm = LoopbackCommunicator(2)
    shapes = [(4, 576), (1, 576), (4, 576), (3, 7)]
    data = {s: inputs(2, int(np.prod(s)), "f32", seed=len(s) + s[0]) for s in shapes}

    def rank(r: int) -> list[np.ndarray]:
        return [comm.all_reduce(Tensor.from_numpy(data[s][r].reshape(s), "cpu"),
                                rank=r).numpy() for s in shapes]

    for res in raise_any(run_ranks(2, rank)):
        for s, out in zip(shapes, res):
            np.testing.assert_array_equal(out, (data[s][0] + data[s][1]).reshape(s))
    solo = LoopbackCommunicator(1)
    x = Tensor.from_numpy(np.arange(5, dtype=np.float32), "cpu")
    out = solo.all_reduce(x, Tensor.empty((5,), "f32", "cpu"))  # rank defaults to the only one
    np.testing.assert_array_equal(out.numpy(), np.arange(5))


@pytest.mark.parametrize("op", ["max", "min", "avg"])
def test_loopback_unsupported_ops(op: str) -> None:
    comm = LoopbackCommunicator(2)
    x = Tensor.from_numpy(np.ones(4, np.float32), "cpu")
    for r in range(2):  # raised before the barrier: nothing waits, the comm stays usable
        with pytest.raises(NotImplementedError, match=f"'{op}'"):
            comm.all_reduce(x, op=op, rank=r)
    outs = raise_any(run_ranks(2, lambda r: comm.all_reduce(
        Tensor.from_numpy(np.ones(4, np.float32), "cpu"), rank=r).numpy()))
    assert all((o == 2).all() for o in outs)


def test_argument_errors() -> None:
    comm = LoopbackCommunicator(2)
    x = Tensor.from_numpy(np.ones((4, 6), np.float32), "cpu")
    with pytest.raises(ValueError, match="unknown reduce op 'mean'"):
        comm.all_reduce(x, op="mean", rank=0)
    with pytest.raises(ValueError, match="pass rank="):
        comm.all_reduce(x)
    with pytest.raises(ValueError, match="rank 2 is not driven here"):
        comm.all_reduce(x, rank=2)
    with pytest.raises(TypeError, match="rank must be an int"):
        comm.all_reduce(x, rank=True)
    with pytest.raises(ValueError, match="contiguous"):
        comm.all_reduce(x.transpose(0, 1), rank=0)
    with pytest.raises(ValueError, match="i32; supported: f32, f16, bf16"):
        comm.all_reduce(Tensor.from_numpy(np.ones(3, np.int32), "cpu"), rank=0)
    with pytest.raises(ValueError, match="differs from tensor_in"):
        comm.all_reduce(x, Tensor.empty((4, 5), "f32", "cpu"), rank=0)
    with pytest.raises(ValueError, match="partly overlaps"):
        comm.all_reduce(x.narrow(0, 0, 2), x.narrow(0, 1, 2), rank=0)
    with pytest.raises(ValueError, match="world_size must be a positive int"):
        LoopbackCommunicator(0)


def test_loopback_ranks_that_disagree() -> None:
    comm = LoopbackCommunicator(2)
    shapes = [(8,), (9,)]
    res = run_ranks(2, lambda r: comm.all_reduce(
        Tensor.from_numpy(np.ones(shapes[r], np.float32), "cpu"), rank=r))
    assert all(isinstance(e, CommError) and "disagree" in str(e) for e in res)
    # the error was collective: the communicator still works
    outs = raise_any(run_ranks(2, lambda r: comm.all_reduce(
        Tensor.from_numpy(np.full(3, r, np.float32), "cpu"), rank=r).numpy()))
    assert all((o == 1).all() for o in outs)


def test_loopback_missing_rank_times_out() -> None:
    comm = LoopbackCommunicator(2, timeout=0.5)
    x = Tensor.from_numpy(np.ones(4, np.float32), "cpu")
    with pytest.raises(CommError, match="not every rank arrived within 0.5 s"):
        comm.all_reduce(x, rank=0)
    with pytest.raises(CommError):  # broken for good: a collective lost a rank
        comm.all_reduce(x, rank=1)


def test_timing_flag_synchronizes(monkeypatch: pytest.MonkeyPatch) -> None:
    synced = []
    monkeypatch.setattr(Device, "synchronize", lambda self: synced.append(str(self)))
    x = Tensor.from_numpy(np.ones(4, np.float32), "cpu")
    LoopbackCommunicator(1).all_reduce(x)
    assert synced == []  # never by default
    comm = LoopbackCommunicator(1, timing=True)
    comm.all_reduce(x)
    assert synced == ["cpu:0", "cpu:0"]  # before (not timed) and after the call
    assert comm.stats().calls == 1
    comm.reset_stats()
    assert comm.stats().calls == 0


def test_make_communicator(fake_gpus, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(make_communicator(["cpu", "cpu:0"]), LoopbackCommunicator)
    assert make_communicator(["cpu"]).world_size == 1
    monkeypatch.setattr(comm_module, "_ccl_library", lambda: FakeCCL(2))
    assert isinstance(make_communicator(["nvidia:0", "nvidia:1"]), InfiniCCLCommunicator)


# -- InfiniCCL on the real CPU build ----------------------------------------------------------


def test_cpu_build_has_no_infiniccl_backend() -> None:
    """libinfiniccl.so of the CPU build exports the three 0.1.0 functions as stubs that
    answer DEVICE_TYPE_NOT_SUPPORTED: an explicit unsupported error, never a fake comm."""
    with pytest.raises(InfiniError) as info:
        InfiniCCLCommunicator(["cpu"])
    assert info.value.unsupported and info.value.status == 5
    assert "no InfiniCCL backend for cpu" in str(info.value)


def test_init_rank_follows_the_build_record() -> None:
    """Whether the loaded libinfiniccl has infinicclGetUniqueId/infinicclCommInitRank is
    what its Build record (ELF exports) says: InfiniCore 0.1.0 lacks them (not declared;
    init_rank says so), upstream has them (declared; its CPU backend refuses)."""
    ccl = load().ccl
    assert ccl is not None
    has = current_build().ccl_init_rank
    assert library.has_ccl_init_rank(ccl) == InfiniCCLCommunicator.supports_init_rank() == has
    if not has:
        with pytest.raises(MissingSymbol) as info:
            InfiniCCLCommunicator.init_rank("cpu:0", rank=0, world_size=1)
        assert info.value.unsupported and "newer than 0.1.0" in str(info.value)
    else:
        with pytest.raises(InfiniError) as refused:
            InfiniCCLCommunicator.init_rank("cpu:0", rank=0, world_size=1)
        assert refused.value.unsupported and refused.value.call == "infinicclGetUniqueId"


# -- InfiniCCL against a stand-in library -----------------------------------------------------


class FakeCCL:
    """Records the calls the binding makes; `with_init_rank` adds the post-0.1.0 symbols."""

    def __init__(self, world: int, with_init_rank: bool = False) -> None:
        self.calls: list[tuple] = []
        self.lock = threading.Lock()
        self.joined = threading.Barrier(world)  # CommInitRank returns once all ranks joined
        self.ids = itertools.count(0x100)
        if with_init_rank:  # plain functions, which take the argtypes the binding declares
            self.infinicclGetUniqueId = lambda *a: self._get_unique_id(*a)
            self.infinicclCommInitRank = lambda *a: self._comm_init_rank(*a)

    def _record(self, *call) -> None:
        with self.lock:
            self.calls.append(call + (threading.get_ident(), device._state.current))

    def infinicclCommInitAll(self, device_type, comms, n, ids):
        for i in range(n):
            comms[i] = 0x1000 + ids[i]
        self._record("init_all", device_type, n, list(ids))
        return 0

    def infinicclAllReduce(self, send, recv, count, dtype, op, comm, stream):
        self._record("all_reduce", send, recv, count, dtype, op, comm, stream)
        return 0

    def infinicclCommDestroy(self, comm):
        self._record("destroy", comm)
        return 0

    def _get_unique_id(self, uid_ref):
        payload = os.urandom(library.INFINICCL_UNIQUE_ID_BYTES)
        ctypes.memmove(ctypes.addressof(uid_ref._obj), payload, len(payload))
        self._record("get_unique_id", payload)
        return 0

    def _comm_init_rank(self, comm_ref, nranks, uid, rank):
        assert isinstance(uid, library.InfinicclUniqueId)  # by value, as declared
        self._record("init_rank", nranks, bytes(uid), rank)
        self.joined.wait(30)
        comm_ref._obj.value = 0x2000 + rank
        return 0


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four nvidia devices for Device.activate (its infinirtSetDevice does nothing)."""
    # Garbage of earlier tests (real CPU buffers) is freed with the real library first: a
    # buffer collected on a rank's thread in the middle of a check switches that thread's
    # device (Device.free), which the fake library must then also allow.
    gc.collect()
    lib = SimpleNamespace(rt=SimpleNamespace(infinirtSetDevice=lambda code, index: 0,
                                             infinirtFree=lambda ptr: 0))
    monkeypatch.setattr(device._state, "current", None)
    monkeypatch.setattr(device, "load", lambda: lib)
    monkeypatch.setattr(device, "device_count", lambda kind: 4 if kind == "nvidia" else 1)


def test_a_failed_free_keeps_the_threads_device(fake_gpus, monkeypatch) -> None:
    """A buffer freed by the garbage collector on a rank's thread must not leave that
    thread on the buffer's device, even when the free itself fails."""
    def failing_free(ptr):
        raise OSError("infinirtFree failed")

    monkeypatch.setattr(device.load().rt, "infinirtFree", failing_free)
    Device("nvidia", 2).activate()
    with pytest.raises(OSError):
        Device("cpu").free(0x1000)
    assert device._state.current == (Device("nvidia", 2).code, 2)


def gpu_tensor(dev: str, shape: tuple[int, ...], dtype: str = "bf16") -> Tensor:
    """A tensor on a fake device: a buffer stand-in with an address and a size."""
    nbytes = int(np.prod(shape)) * DType.parse(dtype).itemsize
    d = Device.parse(dev)
    buf = SimpleNamespace(device=d, nbytes=nbytes, ptr=0x10_0000 * (d.index + 1))
    return Tensor(buf, dtype, shape)


def test_infiniccl_init_all_and_all_reduce(fake_gpus) -> None:
    ccl = FakeCCL(2)
    comm = InfiniCCLCommunicator(["nvidia:0", "nvidia:1"], ccl=ccl)
    assert ccl.calls[0][:4] == ("init_all", 1, 2, [0, 1])
    assert comm.world_size == 2 and comm.ranks == (0, 1)
    xs = [gpu_tensor(f"nvidia:{r}", (4, 576)) for r in range(2)]

    def rank(r: int) -> None:
        comm.all_reduce(xs[r], op="max", rank=r)

    raise_any(run_ranks(2, rank))
    reduces = sorted(c for c in ccl.calls if c[0] == "all_reduce")
    assert len(reduces) == 2
    for r, call in enumerate(sorted(reduces, key=lambda c: c[6])):
        _, send, recv, count, dtype, op, handle, stream, _, current = call
        assert (send, recv, count, dtype, op, handle, stream) == (
            xs[r].data_ptr, xs[r].data_ptr, 4 * 576, int(DType.BF16), 2, 0x1000 + r, None)
        assert current == (1, r)  # called on a thread that activated the rank's device
    assert comm.stats(0).calls == 1 and comm.stats(1).bytes == 4 * 576 * 2
    with pytest.raises(ValueError, match="rank 0 on nvidia:0"):
        comm.all_reduce(xs[1], rank=0)
    comm.close()
    assert sorted(c[1] for c in ccl.calls if c[0] == "destroy") == [0x1000, 0x1001]
    with pytest.raises(CommError, match="closed"):
        comm.all_reduce(xs[0], rank=0)


def test_infiniccl_status_becomes_infini_error(fake_gpus) -> None:
    ccl = FakeCCL(1)
    ccl.infinicclAllReduce = lambda *args: 10  # BAD_TENSOR_DTYPE
    comm = InfiniCCLCommunicator(["nvidia:2"], ccl=ccl)
    with pytest.raises(InfiniError) as info:
        comm.all_reduce(gpu_tensor("nvidia:2", (3,), "f16"), rank=0)
    assert info.value.unsupported and "infinicclAllReduce" in str(info.value)


def test_infiniccl_device_arguments(fake_gpus) -> None:
    with pytest.raises(ValueError, match="one device per rank"):
        InfiniCCLCommunicator(["nvidia:0", "nvidia:0"], ccl=FakeCCL(2))
    with pytest.raises(ValueError, match="one device type"):
        InfiniCCLCommunicator(["nvidia:0", "cpu"], ccl=FakeCCL(2))


def test_init_rank_symbol_detection() -> None:
    assert not library.has_ccl_init_rank(FakeCCL(1))
    assert library.has_ccl_init_rank(FakeCCL(1, with_init_rank=True))
    assert not library.has_ccl_init_rank(None)
    assert InfiniCCLCommunicator.supports_init_rank(FakeCCL(1, with_init_rank=True))
    with pytest.raises(MissingSymbol, match="one thread per rank"):
        InfiniCCLCommunicator.init_rank(ccl=FakeCCL(1), environ={})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_init_rank_launcher(fake_gpus) -> None:
    """Three processes as torchrun starts them (threads here): rank 0 makes the unique id
    and serves it over TCP; every rank passes the same 128 bytes by value, its rank and
    the world size to infinicclCommInitRank, on the device LOCAL_RANK names."""
    world, port = 3, free_port()
    ccl = FakeCCL(world, with_init_rank=True)

    def process(r: int):
        env = {"RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        return InfiniCCLCommunicator.init_rank("nvidia", environ=env, ccl=ccl, timeout=20)

    comms = raise_any(run_ranks(world, process))
    made = [c for c in ccl.calls if c[0] == "get_unique_id"]
    assert len(made) == 1 and made[0][-1] == (1, 0)  # by rank 0, on its device
    uid = made[0][1]
    joined = sorted((c for c in ccl.calls if c[0] == "init_rank"), key=lambda c: c[3])
    assert [(c[1], c[2], c[3], c[5]) for c in joined] == [
        (world, uid, r, (1, r)) for r in range(world)]
    assert ccl.infinicclCommInitRank.argtypes[2] is library.InfinicclUniqueId  # by value
    for r, comm in enumerate(comms):
        assert comm.ranks == (r,) and comm.world_size == world
        assert comm.device() == Device("nvidia", r)
    x = gpu_tensor("nvidia:1", (5,), "f32")
    comms[1].all_reduce(x)  # the only rank of this process: no rank= needed
    call = [c for c in ccl.calls if c[0] == "all_reduce"][-1]
    assert call[6] == 0x2001 and call[3] == 5


def test_init_rank_environment(fake_gpus) -> None:
    ccl = FakeCCL(1, with_init_rank=True)
    with pytest.raises(ValueError, match=r"\$RANK is not set"):
        InfiniCCLCommunicator.init_rank(ccl=ccl, environ={})
    with pytest.raises(ValueError, match=r"\$WORLD_SIZE='two' is not an integer"):
        InfiniCCLCommunicator.init_rank(ccl=ccl, environ={"RANK": "0", "WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="rank 2 outside world size 2"):
        InfiniCCLCommunicator.init_rank(ccl=ccl, environ={"RANK": "2", "WORLD_SIZE": "2"})
    # a single rank needs no rendezvous; an explicit device wins over LOCAL_RANK
    comm = InfiniCCLCommunicator.init_rank("nvidia:3", ccl=ccl,
                                           environ={"RANK": "0", "WORLD_SIZE": "1",
                                                    "LOCAL_RANK": "1"})
    assert comm.device() == Device("nvidia", 3)


def test_rendezvous_address() -> None:
    env = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert rendezvous_address(env) == ("10.0.0.1", 29500)
    # torchrun's agent store listens on MASTER_PORT itself
    assert rendezvous_address({**env, "TORCHELASTIC_USE_AGENT_STORE": "True"})[1] == 29501
    assert rendezvous_address({**env, "INFINILM_CCL_PORT": "4000"})[1] == 4000
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        rendezvous_address({"MASTER_PORT": "1"})


def test_rendezvous_rejects_another_service(fake_gpus) -> None:
    """A non-zero rank that reaches something else on the port says so (no hang)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n" + b"x" * 200)
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    with pytest.raises(CommError, match="not an InfiniCCL rendezvous"):
        InfiniCCLCommunicator.init_rank("nvidia:1", environ=env, timeout=10,
                                        ccl=FakeCCL(2, with_init_rank=True))
    t.join()
    srv.close()


def test_bf16_reference_helper_rounds_like_infinicore() -> None:
    """The reference above rounds f32 sums to bf16 to nearest even (as the CPU add does)."""
    a = np.array([1.0], ml_dtypes.bfloat16)
    b = np.array([2.0 ** -8], ml_dtypes.bfloat16)  # half an ulp of 1.0: a tie, to even
    assert rank_order([a, b], "sum")[0] == 1.0


def test_infiniccl_that_did_not_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build with InfiniCCL whose NCCL is gone still runs ops; a communicator says why."""
    lib = load()
    broken = library.Library(root=lib.root, rt=lib.rt, op=lib.op, ccl=None, build=lib.build,
                             ccl_error="libnccl.so.2: cannot open shared object file")
    monkeypatch.setattr(library, "_lib", broken)
    with pytest.raises(MissingSymbol, match="did not load: libnccl.so.2") as info:
        InfiniCCLCommunicator(["cpu"])
    assert info.value.unsupported
