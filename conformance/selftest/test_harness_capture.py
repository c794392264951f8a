"""The layer comparison on synthetic captures (no InfiniCore): a planned capture point
missing on a side fails the comparison naming it, and a localization says what the
isolated comparison of the tensor it names found."""

from __future__ import annotations

import numpy as np

from conformance.judge import Calibrated
from conformance.model.checks import compare_capture
from infinilm_models.models.llama.capture import capture_points

CAL, GATE = Calibrated(4.0, 1e-9, "cal"), Calibrated(64.0, 1e-8, "gate")
POINTS = capture_points(2)


def _golden() -> dict:
    rng = np.random.default_rng(7)
    return {p.name: rng.standard_normal((1, 3, 8)) for p in POINTS}


def _off(d: dict, name: str, by: float) -> dict:
    out = dict(d)
    out[name] = d[name] * (1 + by)
    return out


def test_a_planned_point_missing_on_a_side_fails_naming_it():
    golden = _golden()
    ours = dict(golden)
    del ours["layers.1.mlp"]
    result = compare_capture(POINTS, ours=ours, ref=golden, golden=golden, ours_iso=golden,
                             ref_iso=golden, cal=CAL, gate=GATE, phase="prefill")
    bad = [c for c in result.comparisons if not c.passed]
    assert len(bad) == 1 and "layers.1.mlp" in bad[0].reason
    assert "1 of" in bad[0].reason and "not compared" in bad[0].reason
    iso = dict(golden)
    del iso["layers.0.key_cache"]  # an isolatable point missing on the isolated side
    result = compare_capture(POINTS, ours=golden, ref=golden, golden=golden, ours_iso=iso,
                             ref_iso=golden, cal=CAL, gate=GATE, phase="prefill")
    assert any("layers.0.key_cache" in c.reason for c in result.comparisons if not c.passed)


def test_the_localization_says_what_the_isolated_comparison_found():
    golden = _golden()
    # wrong on its own: the isolated run shows it too
    wrong = _off(golden, "layers.1.mlp", 0.1)
    (loc,) = compare_capture(POINTS, ours=wrong, ref=golden, golden=golden, ours_iso=wrong,
                             ref_iso=golden, cal=CAL, gate=GATE,
                             phase="prefill").localizations
    assert (loc.tensor, loc.origin) == ("layers.1.mlp", "starts here")
    # grown on its way: the isolated run of the named tensor is within bound
    (loc,) = compare_capture(POINTS, ours=wrong, ref=golden, golden=golden, ours_iso=golden,
                             ref_iso=golden, cal=CAL, gate=GATE,
                             phase="prefill").localizations
    assert (loc.tensor, loc.origin) == ("layers.1.mlp", "arrives from earlier layers")
    assert "within bound" in loc.description
    # no isolated run: no claim either way
    (loc,) = compare_capture(POINTS, ours=wrong, ref=golden, golden=golden, ours_iso=None,
                             ref_iso=None, cal=CAL, gate=GATE, phase="prefill").localizations
    assert loc.origin == "not measured" and "was not measured" in loc.description
    assert "earlier layers" not in loc.description


def test_a_wrong_cache_write_is_named_before_the_attention_that_reads_it():
    golden = _golden()
    wrong = _off(_off(golden, "layers.0.key_cache", 0.1), "layers.0.self_attn", 0.1)
    (loc,) = compare_capture(POINTS, ours=wrong, ref=golden, golden=golden, ours_iso=wrong,
                             ref_iso=golden, cal=CAL, gate=GATE,
                             phase="decode").localizations
    assert (loc.tensor, loc.submodule, loc.origin) == ("layers.0.key_cache", "kv cache",
                                                       "starts here")
