"""One capability source: the build's record (capabilities.Build, read from its files)
is what the loaded library declares, what the suite plans by (an op the build lacks is
`unsupported` at collection), which graph API runs captured steps, and what the capture
table names (the ops of the fusion plan that ran)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from infinilm_models.models.llama.capture import capture_points
from infinilm_models.models.llama.fusion import FUSIONS, Fused
from infinilm_models.runtime import Device, graph, load
from infinilm_models.runtime.capabilities import GRAPH, build_at, current_build
from infinilm_models.runtime.ops.specs import SPECS, spec

ROOT = Path(__file__).resolve().parents[1]


def test_the_library_declares_exactly_what_the_build_lists() -> None:
    lib, build = load(), current_build()
    assert lib.build is build and build.exports_known
    assert lib.ops == build.bound_ops and lib.graph_api == build.graph_api
    assert lib.ccl_init_rank == (lib.ccl is not None and build.ccl_init_rank)
    for s in SPECS:
        fn = getattr(lib.op, s.compute_fn, None)  # dlsym: None where not exported
        declared = fn is not None and fn.argtypes is not None
        assert declared == build.has_op(s.name), s.name
    for name in GRAPH.symbols:
        fn = getattr(lib.rt, name, None)
        assert (fn is not None and fn.argtypes is not None) == build.graph_api, name


def test_unknown_exports_are_completed_by_name() -> None:
    """A build whose ELF tables could not be read: the by-name lookup in the loaded
    libraries finds the same ops and APIs the tables list."""
    lib, build = load(), current_build()
    blind = replace(build, exports=frozenset(), exports_known=False)
    found = blind.probed(lambda n: any(hasattr(x, n) for x in (lib.rt, lib.op, lib.ccl)
                                       if x is not None))
    assert found.bound_ops == build.bound_ops
    assert (found.graph_api, found.ccl_init_rank) == (build.graph_api, build.ccl_init_rank)
    assert build.probed(lambda n: False) is build  # readable tables are not second-guessed


def test_graph_api_is_chosen_from_exports() -> None:
    build = current_build()
    bare = replace(build, exports=build.exports - set(GRAPH.symbols), needed=("libc.so.6",))
    assert bare.graph_runtime is None
    linked = replace(bare, needed=("libstdc++.so.6", "libcudart.so.12", "libcublas.so.12"))
    assert linked.graph_runtime == "libcudart.so.12"  # 0.1.0 on NVIDIA: the CUDA runtime
    own = replace(linked, exports=linked.exports | set(GRAPH.symbols))
    assert own.graph_runtime == "infinirt"  # infinirt's own API wins
    assert build.graph_runtime == ("infinirt" if build.graph_api else build.cuda_runtime)
    # The CPU's streams are null: nothing to capture, whichever API the build has.
    graph._backends.pop("cpu", None)
    assert graph.graph_backend(Device("cpu")) is None
    assert '"nvidia"' not in inspect.getsource(graph)  # no device-name test


@pytest.mark.parametrize("names, residual, mlp, embed", [
    ((), ("add",), ("rms_norm", "gemm", "swiglu"), ()),
    (("add_rms_norm",), ("add_rms_norm",), ("add_rms_norm", "gemm", "swiglu"), ()),
    (("silu_and_mul", "embedding"), ("add",), ("rms_norm", "gemm", "silu_and_mul"),
     ("embedding",)),
    (tuple(f.name for f in FUSIONS), ("add_rms_norm",),
     ("add_rms_norm", "gemm", "silu_and_mul"), ("embedding",)),
])
def test_capture_names_follow_the_plan(names, residual, mlp, embed) -> None:
    points = {p.name: p for p in capture_points(2, fused=Fused.of(names))}
    assert points["layers.1.residual_attn"].ops == residual
    assert points["layers.1.mlp"].ops == mlp and points["embed_tokens"].ops == embed
    assert points["layers.0"].ops == ("add",) and points["norm"].ops == ("rms_norm",)
    assert [p.name for p in points.values()] == [p.name for p in capture_points(2)]


def test_the_model_plans_from_the_build() -> None:
    """A model's fusions are those the build has (and that run on the CPU); its capture
    points name them."""
    from conformance.model.harness import points_of
    from infinilm_fixtures.tiny import ensure
    from infinilm_models import AutoLlamaModel
    from infinilm_models.models.llama.fusion import available
    from infinilm_models.runtime import DType

    model = AutoLlamaModel.from_pretrained(ensure("gqa"), "cpu", "f32", progress=False)
    have = available(current_build(), Device("cpu"), DType.F32, model.config)
    assert set(model.fused.names) == {n for n in have if n != "paged_attention"}
    for f in model.fused.names:
        assert all(current_build().has_op(op) for op in spec_ops(f))
    mlp = next(p for p in points_of(model) if p.name == "layers.0.mlp")
    assert ("add_rms_norm" in mlp.ops) == ("add_rms_norm" in model.fused.names)
    assert ("silu_and_mul" in mlp.ops) == ("silu_and_mul" in model.fused.names)


def spec_ops(fusion: str) -> tuple[str, ...]:
    return next(f.ops for f in FUSIONS if f.name == fusion)


# A build record without AddRMSNorm and SiluAndMul, made in the inner run's controller and
# workers before collection: the real library stays as it is (only the record is trimmed).
TRIM = """
from dataclasses import replace

from infinilm_models.runtime import capabilities
from infinilm_models.runtime.library import find_root
from infinilm_models.runtime.ops.specs import spec


def pytest_configure(config):
    build = capabilities.build_at(find_root())
    gone = set(spec("AddRMSNorm").functions) | set(spec("SiluAndMul").functions)
    capabilities.remember(replace(build, exports=build.exports - gone))
"""


def test_an_op_the_build_lacks_is_unsupported_at_collection(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "trim_record.py").write_text(textwrap.dedent(TRIM))
    reports = tmp_path / "reports"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(plugin)])}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
         "-p", "no:xdist", "-p", "trim_record", "-q", "--infini-device", "cpu",
         f"--report-dir={reports}", "--dtype", "f32", "conformance/ops/test_op_add_rms_norm.py",
         "conformance/ops/test_op_rms_norm.py", "conformance/ops/test_op_silu.py",
         "-k", "decode or prefill"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    doc = json.loads(((reports / "latest").resolve() / "results.json").read_text())
    assert proc.returncode == 0, proc.stdout[-3000:]
    by_check: dict[str, list[dict]] = {}
    for r in doc["results"]:
        by_check.setdefault(r["check"], []).append(r)
    lacking = by_check["op_add_rms_norm"]
    assert doc["planned"] == len(doc["results"]) and len(lacking) >= 2
    for r in lacking:  # planned, recorded, unsupported with the reason; the body never ran
        assert r["status"] == "unsupported", r
        assert "infiniopAddRMSNorm: not exported by this build" in r["message"]
        assert "decided at collection" in r["message"] and r["infini_ops"] == []
    assert all(r["status"] == "passed" for r in by_check["op_rms_norm"])
    # test_op_silu.py checks two ops: each check is decided by its own
    silu = {r["test"]: r for r in by_check["op_silu"] if r["params"]["case"] == "decode"}
    fused = silu["test_op_silu_and_mul"]
    assert fused["op"] == "silu_and_mul" and fused["status"] == "unsupported"
    assert "infiniopSiluAndMul: not exported by this build" in fused["message"]
    plain = silu["test_op_silu"]
    assert ("decided at collection" in plain["message"]) == (not current_build().has_op("Silu"))
    assert {"AddRMSNorm", "SiluAndMul"} <= set(doc["coverage"]["not_exported"])
    assert spec("AddRMSNorm").compute_fn == "infiniopAddRMSNorm"


def test_build_records_are_read_once_per_prefix() -> None:
    build = current_build()
    assert build_at(build.root) is build
