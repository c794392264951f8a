"""The transformers side runs on the torch device InfiniCore's own tests map the device
under test to (upstream test/infinicore/framework/devices.py), when that torch backend is
there and computes right; else on the CPU, with the golden in float64. The backends this
machine lacks are exercised with a stand-in torch module whose devices compute on the
CPU; the fallback with the real (CPU-only) torch."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch

from conformance import placement
from conformance.placement import Probe, golden_of, probe

# InfiniCore's own mapping, as its tests state it (the reading of devices.py).
INFINICORE_MAP = {"nvidia": "cuda", "metax": "cuda", "iluvatar": "cuda", "kunlun": "cuda",
                  "hygon": "cuda", "qy": "cuda", "ali": "cuda", "ascend": "npu",
                  "cambricon": "mlu", "moore": "musa"}


class Backend:
    """torch.<backend> of a stand-in torch: `count` devices, available or not."""

    def __init__(self, count: int = 2, available: bool = True) -> None:
        self.count, self.available = count, available
        self.synchronize = lambda: None

    def is_available(self) -> bool:
        return self.available

    def device_count(self) -> int:
        return self.count


def stand_in(backends: dict[str, Backend], *, wrong: str | None = None,
             no_f64: str | None = None) -> SimpleNamespace:
    """A torch module whose accelerator devices compute on the CPU (real torch), recording
    the devices asked for; `wrong`: a backend whose results are off; `no_f64`: one that
    refuses float64."""
    asked: list[str] = []

    def full(shape, value, *, dtype, device):
        asked.append(device)
        backend = device.split(":")[0]
        if backend == no_f64 and dtype == torch.float64:
            raise RuntimeError(f"{backend} does not support float64")
        return torch.full(shape, value * (2 if backend == wrong else 1), dtype=dtype)

    return SimpleNamespace(full=full, float32=torch.float32, float64=torch.float64,
                           __version__="stand-in", asked=asked, **backends)


def every_backend() -> dict[str, Backend]:
    return {b: Backend() for b in ("cuda", "npu", "mlu", "musa")}


def imports(log: list[str]):
    def import_module(name: str):
        log.append(name)
        return SimpleNamespace()
    return import_module


@pytest.mark.parametrize("kind", sorted(INFINICORE_MAP) + ["sugon", "dcu", "ppu", "gpu"])
def test_each_device_kind_maps_as_infinicore_tests_do(kind: str) -> None:
    fake, loaded = stand_in(every_backend()), []
    p = probe(f"{kind}:1", torch=fake, import_module=imports(loaded))
    want = INFINICORE_MAP[{"sugon": "hygon", "dcu": "hygon", "ppu": "ali",
                           "gpu": "nvidia"}.get(kind, kind)]
    assert (p.wanted, p.device, p.works, p.float64) == (f"{want}:1", f"{want}:1", True, True)
    assert fake.asked and set(fake.asked) == {f"{want}:1"}  # it computed there
    assert loaded == ({"npu": ["torch_npu"], "mlu": ["torch_mlu"],
                       "musa": ["torch_musa"]}.get(want, []))
    assert golden_of(p) == ("f64", f"{want}:1")


def test_the_cpu_stays_on_the_cpu_with_its_float32_golden() -> None:
    p = probe("cpu", torch=stand_in(every_backend()))
    assert (p.device, p.accelerator) == ("cpu", False)
    assert golden_of(p) == ("f32", "cpu")


@pytest.mark.parametrize("backends, import_fails, wrong, said", [
    ({}, False, None, "torch.npu is not available"),
    ({"npu": Backend(available=False)}, False, None, "torch.npu is not available"),
    ({"npu": Backend(count=1)}, False, None, "torch sees 1 npu device(s)"),
    ({"npu": Backend()}, True, None, "torch_npu is not installed"),
    ({"npu": Backend()}, False, "npu", "gave a wrong value"),
])
def test_a_backend_that_is_not_there_or_fails_falls_back_to_the_cpu(
        backends, import_fails, wrong, said) -> None:
    def import_module(name):
        if import_fails:
            raise ImportError(f"No module named {name!r}")
    p = probe("ascend:1", torch=stand_in(backends, wrong=wrong), import_module=import_module)
    assert (p.wanted, p.device, p.works) == ("npu:1", "cpu", False)
    assert said in p.outcome and "the reference runs on the CPU" in p.outcome
    assert golden_of(p) == ("f64", "cpu")  # an accelerator's golden: float64, on the CPU


def test_no_float64_on_the_device_puts_only_the_golden_on_the_cpu() -> None:
    p = probe("ascend:0", torch=stand_in(every_backend(), no_f64="npu"),
              import_module=imports([]))
    assert (p.device, p.works, p.float64) == ("npu:0", True, False)
    assert "no float64 there" in p.outcome
    assert golden_of(p) == ("f64", "cpu")


def absent() -> str:
    """A device kind whose torch backend this machine's torch lacks (its extension is not
    installed): Ascend, Cambricon or Moore Threads."""
    for kind, ext in (("ascend", "torch_npu"), ("cambricon", "torch_mlu"),
                      ("moore", "torch_musa")):
        if importlib.util.find_spec(ext) is None:
            return kind
    pytest.fail("torch_npu, torch_mlu and torch_musa are all installed: no backend to miss")


def test_this_machines_torch_falls_back_with_a_float64_golden() -> None:
    """The real torch: a device whose torch backend is missing has its reference on the
    CPU and a float64 golden there; a CUDA-mapped one runs on CUDA only where it works."""
    kind = absent()
    p = probe(f"{kind}:1")
    assert p.device == "cpu" and not p.works and p.accelerator, p
    assert placement.golden_placement(f"{kind}:1") == ("f64", "cpu")
    assert placement.torch_device(f"{kind}:1") == "cpu"
    assert probe(f"{kind}:1") is p  # once per process
    cuda = probe("metax:0")
    if torch.cuda.is_available():
        assert cuda.device == "cuda:0" and placement.golden_placement("metax:0")[1] == \
            ("cuda:0" if cuda.float64 else "cpu")
    else:
        assert cuda.device == "cpu" and cuda.outcome.startswith("torch.cuda is not available")
        assert placement.golden_placement("hygon:1") == ("f64", "cpu")
    assert placement.golden_placement("cpu") == ("f32", "cpu")
    where = placement.describe(f"{kind}:0", ["bf16"])
    assert where["reference"].endswith("on cpu") and where["golden"] == "transformers f64 on cpu"
    assert where["cpu_reference_for_accelerator"] and where["probe"]["device"] == "cpu"
    assert where["torch_device_mapped"] == INFINICORE_MAP[kind] + ":0"
    assert placement.torch_note("metax:0", "cpu").startswith("CPU torch against metax:0")
    assert placement.torch_note("cpu", "cpu") is None
    assert placement.torch_note("nvidia:0", "cuda:0") is None


def test_the_fallback_golden_is_a_float64_model() -> None:
    from conformance.model.harness import hf_model
    from infinilm_fixtures.tiny import ensure

    gdtype, gdevice = placement.golden_placement(absent())
    model = hf_model(str(ensure("gqa")), gdtype, gdevice)
    param = next(model.parameters())
    assert (param.dtype, param.device.type) == (torch.float64, "cpu")


def test_the_report_shows_where_each_side_ran() -> None:
    from conformance.report.environment import environment_rows

    kind = absent()
    run = SimpleNamespace(
        environment={"placement": placement.describe(f"{kind}:0", ["bf16"]),
                     "golden": "transformers f64 on cpu"},
        build_label="x", started_at="t", duration_s=1.0, pytest_exit_status=0, planned=1,
        dtypes=["bf16"], tolerance_sources=[])
    rows = dict(environment_rows(run))
    assert rows["ours ran on"] == f"InfiniCore on {kind}:0"
    assert rows["reference ran on"].endswith("on cpu")
    assert f"map {kind}:0 to {INFINICORE_MAP[kind]}:0" in rows["torch device probe"]
    assert rows["torch device probe"].endswith("(CPU torch against an accelerator)")


def test_probe_records_describe() -> None:
    p = Probe("qy:0", "cuda:0", "cpu", False, True, "x")
    assert p.describe() == {"infini_device": "qy:0", "wanted": "cuda:0", "device": "cpu",
                            "works": False, "float64": True, "outcome": "x"}
