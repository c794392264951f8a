"""The fused path's check catches a wrong fused op and names where it shows: planted
backends (plants.py) on a build that has the fused ops (upstream InfiniCore: tox -e
upstream runs this). On a build without them (the PyPI release) there is nothing to
plant into: unsupported, said so."""

from __future__ import annotations

import pytest

from .runs import MODEL, bad, locs, suite


@pytest.fixture(scope="module")
def fused_ops():
    from infinilm_models.models.llama.fusion import available
    from infinilm_models.runtime import Device, DType
    from infinilm_models.runtime.capabilities import current_build

    return available(current_build(), Device.parse("cpu"), DType.F32)


@pytest.mark.parametrize("plant, fusion, where", [
    ("add_rms_norm_scale", "add_rms_norm", (0, "mlp", True)),
    ("embedding_next_row", "embedding", (None, "embedding", False)),
])
def test_a_wrong_fused_op_fails_with_its_layer_named(tmp_path, fused_ops, verify, plant,
                                                     fusion, where):
    if fusion not in fused_ops:
        verify.unsupported(RuntimeError(f"this build has no {fusion} on the CPU: the "
                                        "fused path cannot be planted into"))
    status, doc, _ = suite(tmp_path, plant, MODEL.format("fused"), "--model", "tiny-gqa",
                           "--dtype", "f32")
    assert status == 1
    failed = [r for r in bad(doc) if r["check"] == "model_fused"]
    assert failed, [(r["nodeid"], r["status"]) for r in doc["results"]]
    first = locs(doc, "model_fused")[0]
    layer, submodule, isolated = where
    assert (first["layer"], first["submodule"], first["isolated"]) == \
        (layer, submodule, isolated), first["description"]
    # named by the op that ran (the capture table follows the plan), not 0.1.0's add/rms_norm
    assert fusion in first["ops"], first["ops"]
