"""Where the transformers side runs: the torch device InfiniCore's own tests map the
device under test to, when that torch backend is present and works, else the CPU.

    TORCH_BACKEND        InfiniCore's mapping (test/infinicore/framework/devices.py of
                         upstream): METAX, ILUVATAR, KUNLUN, HYGON, QY, ALI and NVIDIA ->
                         cuda, ASCEND -> npu, CAMBRICON -> mlu, MOORE -> musa
    probe(device)        once per process and device: is that torch device there, does a
                         small computation on it give the right numbers, does float64 work
                         (the golden's dtype); the outcome is recorded in results.json
    golden_placement()   (dtype, torch device) of the golden: float32 on the CPU for a CPU
                         run (the numbers CPU runs have always been judged by), float64 on
                         the accelerator's torch device where it takes float64, else
                         float64 on the CPU

So a MetaX vendor's half-precision bounds are calibrated on the same kind of GPU rounding
as theirs, not on CPU torch's, and a perf ratio "vs torch" says which torch ran.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass

from infinilm_models.runtime.device import kind_of

# By InfiniCore's upstream device names (runtime/device.py KINDS: "sugon" is "hygon").
TORCH_BACKEND = {"cpu": "cpu", "nvidia": "cuda", "cambricon": "mlu", "ascend": "npu",
                 "metax": "cuda", "moore": "musa", "iluvatar": "cuda", "kunlun": "cuda",
                 "hygon": "cuda", "qy": "cuda", "ali": "cuda"}
# The torch extension that registers a backend, imported first (as InfiniCore's tests do).
EXTENSIONS = {"mlu": "torch_mlu", "npu": "torch_npu", "musa": "torch_musa"}


@dataclass(frozen=True)
class Probe:
    infini_device: str
    wanted: str  # the torch device InfiniCore's mapping names ("cuda:0"), or "cpu"
    device: str  # where the same-dtype reference runs: `wanted` if it works, else "cpu"
    works: bool  # `wanted` is there and computed right (always true for the CPU)
    float64: bool  # float64 computes right on `device` (where the golden may run)
    outcome: str  # what was found, in words

    @property
    def accelerator(self) -> bool:
        return kind_of(self.infini_device.split(":")[0]) != "cpu"

    def describe(self) -> dict:
        return asdict(self)


_probes: dict[str, Probe] = {}


def probe(infini_device: str, torch=None, import_module=importlib.import_module) -> Probe:
    """Where transformers runs for `infini_device` ("nvidia:0", "metax", ...): probed once
    per process (a stand-in `torch` is probed afresh, for tests)."""
    if torch is None:
        found = _probes.get(infini_device)
        if found is None:
            import torch as real

            found = _probes[infini_device] = _probe(infini_device, real, import_module)
        return found
    return _probe(infini_device, torch, import_module)


def _probe(infini_device: str, torch, import_module) -> Probe:
    name, _, idx = str(infini_device).partition(":")
    kind = kind_of(name)
    backend = TORCH_BACKEND.get(kind)
    if backend == "cpu":
        return Probe(infini_device, "cpu", "cpu", True, True, "the device under test is the CPU")
    if backend is None:
        return _cpu(infini_device, "cpu", f"InfiniCore's tests map no torch device to {kind!r}")
    wanted = f"{backend}:{int(idx) if idx else 0}"
    if backend in EXTENSIONS:
        try:
            import_module(EXTENSIONS[backend])
        except ImportError as e:
            return _cpu(infini_device, wanted, f"{EXTENSIONS[backend]} is not installed ({e})")
    module = getattr(torch, backend, None)
    try:
        if module is None or not module.is_available():
            return _cpu(infini_device, wanted, f"torch.{backend} is not available in this torch "
                                               f"({getattr(torch, '__version__', '?')})")
        count = module.device_count()
        if int(idx or 0) >= count:
            return _cpu(infini_device, wanted, f"torch sees {count} {backend} device(s)")
        if not _computes(torch, wanted, torch.float32):
            return _cpu(infini_device, wanted, f"a float32 sum on {wanted} gave a wrong value")
    except Exception as e:  # noqa: BLE001 - any failure of the backend means: not usable
        return _cpu(infini_device, wanted, f"{wanted} failed: {type(e).__name__}: {e}")
    try:
        f64 = _computes(torch, wanted, torch.float64)
        why = "" if f64 else "; float64 gave a wrong value there (the golden runs on the CPU)"
    except Exception as e:  # noqa: BLE001 - a backend without float64 (some NPUs)
        f64, why = False, f"; no float64 there ({type(e).__name__}: {e}): the golden runs on " \
                          "the CPU"
    return Probe(infini_device, wanted, wanted, True, f64, f"{wanted} works{why}")


def _cpu(infini_device: str, wanted: str, why: str) -> Probe:
    return Probe(infini_device, wanted, "cpu", False, True, f"{why}: the reference runs on "
                                                              "the CPU")


def _computes(torch, device: str, dtype) -> bool:
    """A small matmul on `device` gives the value every binary float format holds exactly."""
    a = torch.full((4, 4), 0.5, dtype=dtype, device=device)
    total = float((a @ a).sum().to("cpu"))
    return abs(total - 16.0) < 1e-6


def torch_device(infini_device: str) -> str:
    """Where the same-dtype reference runs (see `probe`)."""
    return probe(str(infini_device)).device


def golden_placement(infini_device: str) -> tuple[str, str]:
    """(dtype, torch device) of the golden (see the module docstring); test_model_golden
    checks a golden that is not float64 on the CPU against that."""
    return golden_of(probe(str(infini_device)))


def golden_of(p: Probe) -> tuple[str, str]:
    if not p.accelerator:
        return "f32", "cpu"
    return "f64", p.device if p.float64 else "cpu"


def torch_note(infini_device, tdev: str) -> str | None:
    """Said with every ratio "vs torch" whose torch is the CPU against an accelerator."""
    if tdev == "cpu" and kind_of(str(infini_device).split(":")[0]) != "cpu":
        return f"CPU torch against {infini_device}: no working torch backend for it"
    return None


def describe(infini_device: str, dtypes: list[str] | tuple[str, ...] = ()) -> dict:
    """results.json's environment `placement`: where ours, the reference and the golden
    ran, and the probe's outcome."""
    p = probe(str(infini_device))
    gdtype, gdevice = golden_placement(str(infini_device))
    return {"ours": f"InfiniCore on {infini_device}",
            "reference": f"transformers in the tested dtype ({', '.join(dtypes) or '-'}) on "
                         f"{p.device}",
            "golden": f"transformers {gdtype} on {gdevice}",
            "torch_device_mapped": p.wanted,
            "cpu_reference_for_accelerator": p.accelerator and p.device == "cpu",
            "probe": p.describe()}


def synchronize(torch, device: str):
    """The torch device's synchronize (a no-op on the CPU)."""
    backend = device.split(":")[0]
    if backend == "cpu":
        return lambda: None
    return getattr(torch, backend).synchronize
