"""CapturedStep's bookkeeping, on the CPU with a recording stand-in for a graph API: how a
step is cut into graph segments around the ops that must run eagerly, and that a step,
captured or failed, releases its hold on outgrown workspaces. (Capture itself is checked
on real GPUs by conformance/ops/test_op_capture.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models.runtime import Device, Tensor, graph, ops
from infinilm_models.runtime.graph import CapturedStep, GraphBackend, GraphError
from infinilm_models.runtime.ops._base import Workspace


class Recorder(GraphBackend):
    def __init__(self) -> None:
        self.log: list[str] = []
        self.n = 0

    def begin(self, stream: int) -> None:
        self.log.append("begin")

    def end(self, stream: int) -> int:
        self.n += 1
        self.log.append(f"end {self.n}")
        return self.n

    def instantiate(self, graph: int) -> int:
        return 100 + graph

    def launch(self, exec_: int, stream: int) -> None:
        self.log.append(f"launch {exec_}")

    def destroy(self, graph: int, exec_: int) -> None:
        self.log.append(f"destroy {graph}")


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setitem(graph._backends, "cpu", rec)
    return rec


class FakeStream:
    handle = 0


def test_an_eager_op_splits_the_step(recorder: Recorder) -> None:
    dev = Device("cpu")
    a, b = (Tensor.from_numpy(np.full(4, v, np.float32), dev) for v in (1.0, 2.0))
    c, d = Tensor.empty((4,), "f32", dev), Tensor.empty((4,), "f32", dev)

    def step() -> None:
        ops.mul(c, a, b)
        ops.add(d, c, a)  # eager: a graph before it, another after it
        ops.mul(c, d, b)

    pinned = Workspace.pinned
    s = CapturedStep(dev, FakeStream(), step, eager_ops=("Add",)).capture()
    assert (s.graphs, s.eager_calls) == (2, 1)
    assert recorder.log == ["begin", "end 1", "begin", "end 2"]
    assert Workspace.pinned == pinned + 1
    recorder.log.clear()
    c.copy_from_numpy(np.full(4, 5.0, np.float32))
    s.replay()  # the eager add runs for real between the two launches
    assert recorder.log == ["launch 101", "launch 102"]
    np.testing.assert_array_equal(d.numpy(), np.full(4, 6.0, np.float32))  # 5 + 1: exact
    s.close()
    assert recorder.log[-2:] == ["destroy 1", "destroy 2"] and Workspace.pinned == pinned


def test_a_failed_capture_releases_its_segments_and_pin(recorder: Recorder) -> None:
    dev = Device("cpu")
    a = Tensor.from_numpy(np.ones(4, np.float32), dev)
    c = Tensor.empty((4,), "f32", dev)

    def step() -> None:
        ops.mul(c, a, a)
        ops.add(c, c, a)
        raise GraphError("operation not permitted when stream is capturing")

    pinned = Workspace.pinned
    s = CapturedStep(dev, FakeStream(), step, eager_ops=("Add",))
    with pytest.raises(GraphError):
        s.capture()
    assert Workspace.pinned == pinned and "destroy 1" in recorder.log
    assert (s.graphs, s.eager_calls) == (0, 0)
