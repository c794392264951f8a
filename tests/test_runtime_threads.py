"""The runtime with one thread per rank: each thread activates its own device (infinirt
keeps the current device per thread), owns its workspace, and shares descriptors."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from infinilm_models.runtime import Device, Tensor, device, ops
from infinilm_models.runtime.ops import _base
from infinilm_models.runtime.ops.elementwise import _add


def run_threads(n: int, fn) -> list:
    """fn(i) on n threads started together; their results, or re-raise the first error."""
    results: list = [None] * n
    errors: list = []
    start = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            start.wait()
            results[i] = fn(i)
        except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> list:
    """Two nvidia devices whose infinirtSetDevice records (thread, device type, index)."""
    calls: list[tuple[int, int, int]] = []

    def set_device(code: int, index: int) -> int:
        calls.append((threading.get_ident(), code, index))
        return 0

    lib = SimpleNamespace(rt=SimpleNamespace(infinirtSetDevice=set_device))
    monkeypatch.setattr(device._state, "current", None)  # the main thread's, restored after
    monkeypatch.setattr(device, "load", lambda: lib)
    monkeypatch.setattr(device, "device_count", lambda kind: 2 if kind == "nvidia" else 1)
    return calls


def test_each_thread_activates_its_own_device(fake_gpus: list) -> None:
    """A second thread must not skip infinirtSetDevice because the first set the same
    device: infinirt's current device (CPU by default) is per thread."""
    main = threading.get_ident()
    Device.parse("nvidia:0").activate()
    Device.parse("nvidia:0").activate()  # already current on this thread: no call
    assert fake_gpus == [(main, 1, 0)]

    def rank(i: int) -> tuple[int, int]:
        dev = Device("nvidia", i % 2)
        dev.activate()
        dev.activate()
        return threading.get_ident(), i % 2

    idents = run_threads(4, rank)
    assert sorted(fake_gpus[1:]) == sorted((t, 1, i) for t, i in idents)
    assert device._state.current == (1, 0)  # the main thread's own, untouched


def test_forget_current(fake_gpus: list) -> None:
    dev = Device.parse("nvidia:1")
    dev.activate()
    device.forget_current()
    dev.activate()
    assert [c[1:] for c in fake_gpus] == [(1, 1), (1, 1)]


def test_free_restores_the_threads_device(fake_gpus: list, monkeypatch) -> None:
    freed = []
    monkeypatch.setattr(device.load().rt, "infinirtFree", lambda p: freed.append(p.value),
                        raising=False)
    Device.parse("nvidia:0").activate()
    Device.parse("nvidia:1").free(0x1000)
    assert freed == [0x1000]
    assert [c[1:] for c in fake_gpus] == [(1, 0), (1, 1), (1, 0)]
    assert device._state.current == (1, 0)


def test_workspace_per_thread() -> None:
    cpu = Device.parse("cpu")
    mine = _base.Workspace.of(cpu)
    assert _base.Workspace.of(cpu) is mine
    theirs = run_threads(3, lambda i: _base.Workspace.of(cpu))
    assert len({id(w) for w in theirs + [mine]}) == 4
    assert len({w.thread for w in theirs + [mine]}) == 4
    bufs = run_threads(2, lambda i: _base.Workspace.of(cpu).get(64 + i)[0])
    assert bufs[0] != bufs[1]


def test_op_picks_the_calling_threads_workspace() -> None:
    """CachedOp caches the last workspace; another thread must not reuse it."""
    a = Tensor.from_numpy(np.ones((3, 5), np.float32), "cpu")
    ops.add(a, a, a)
    main_ws = _add._workspace
    assert main_ws.thread == threading.get_ident()
    seen = run_threads(1, lambda i: (ops.add(a, a, a), _add._workspace)[1])[0]
    assert seen is not main_ws and seen.thread != main_ws.thread
    ops.add(a, a, a)
    assert _add._workspace is main_ws


def test_concurrent_miss_creates_one_descriptor() -> None:
    """Threads that miss on one new signature at the same moment create it once."""
    shape = (7, 977)  # a signature no other test uses
    xs = [Tensor.from_numpy(np.full(shape, i, np.float32), "cpu") for i in range(4)]
    before = _add.created
    outs = run_threads(4, lambda i: ops.add(Tensor.empty(shape, "f32", "cpu"), xs[i],
                                            xs[i]).numpy())
    assert _add.created - before == 1
    for i, out in enumerate(outs):
        assert (out == 2 * i).all()


def test_concurrent_ops_on_one_device_are_correct() -> None:
    """Ranks sharing the CPU run gemms and adds at once (ctypes drops the GIL)."""
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((16, 64)).astype(np.float32),
             rng.standard_normal((64, 32)).astype(np.float32)) for _ in range(4)]

    def rank(i: int) -> np.ndarray:
        a, b = (Tensor.from_numpy(x, "cpu") for x in data[i])
        c = Tensor.zeros((16, 32), "f32", "cpu")
        for _ in range(20):
            ops.gemm(c, a, b)
            ops.add(c, c, c)
        return c.numpy()

    for (a, b), out in zip(data, run_threads(4, rank)):
        np.testing.assert_allclose(out, 2 * (a @ b), rtol=1e-5, atol=1e-5)


def test_descriptor_cache_is_per_device() -> None:
    a = Tensor.from_numpy(np.ones((2, 3), np.float32), "cpu")
    ops.add(a, a, a)
    assert Device.parse("cpu") in _add._caches
    for cache in _add._caches.values():
        assert all(len(key) == 2 for key in cache)  # (tensor signatures, params): no device
