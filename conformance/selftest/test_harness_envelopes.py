"""Known-defect envelopes per fixture (known_defects.toml `envelope_by_model`): a number
measured on one model never widens another's bound. Tested on the shipped table with the
judge's own re-judging (judge.with_envelope), as a check applies it."""

from __future__ import annotations

from conformance import judge
from conformance.plugin import defects
from conformance.plugin.options import KNOWN_DEFECTS
from conformance.record import Comparison

F16 = "cpu-f16-conversion-truncates-model"
TF32 = "nvidia-gemm-f32-tf32-model"
ACT = "conformance/model/test_model_activations.py::test_model_activations[{}-f16]"


def _entry(defect_id: str) -> defects.KnownDefect:
    return next(d for d in defects.load(KNOWN_DEFECTS) if d.id == defect_id)


def _calibrated(ours: float, reference: float, k: float, floor: float,
                metric: str = "nmse") -> Comparison:
    c = judge.calibrated_value("isolated sub-modules", ours, reference,
                               judge.Calibrated(k, floor, "model_activations.f16"), metric)
    assert not c.passed
    return c


def test_an_envelope_measured_on_one_model_does_not_widen_another():
    d = _entry(F16)
    # SmolLM2's logits measured 184x transformers' f16 error: its envelope covers that
    smol = d.for_model("smollm2").envelope
    c = _calibrated(150 * 1e-5, 1e-5, 8.0, 1e-6)
    assert judge.with_envelope(c, smol, F16).explained_by == F16
    # a tiny fixture measured about 10x: a sub-module 999x off there is not the defect
    # (the old wildcard envelope, k = 1000 from SmolLM2, recorded it as known_defect)
    tiny = d.for_model("tiny-mha").envelope
    assert judge.with_envelope(_calibrated(15 * 1e-6, 1e-6, 8.0, 1e-6), tiny, F16
                               ).explained_by == F16
    worse = judge.with_envelope(_calibrated(999 * 1e-6, 1e-6, 8.0, 1e-6), tiny, F16)
    assert worse.counts_against and "outside the envelope" in worse.reason


def test_a_model_without_a_measured_envelope_is_not_explained():
    d = _entry(F16)
    assert d.matches(ACT.format("tiny-mha"), "tiny-mha")
    assert not d.matches(ACT.format("tiny-untied"), "tiny-untied")  # measured nothing
    assert not d.matches(ACT.format("my-model"), "/data/my-model")  # a user's checkpoint
    assert d.for_model("tiny-untied") is d and not d.envelope


def test_an_envelope_widens_only_the_metrics_it_measured():
    tiny = _entry(F16).for_model("tiny-headdim").envelope  # perplexity only
    ppl = _calibrated(50 * 1e-4, 1e-4, 4.0, 1e-3, metric="rel_delta")
    assert judge.with_envelope(ppl, tiny, F16).explained_by == F16
    nmse = _calibrated(20 * 1e-6, 1e-6, 8.0, 1e-6)
    assert judge.with_envelope(nmse, tiny, F16).counts_against


def test_the_tf32_floor_is_per_fixture_and_metric():
    d = _entry(TF32)
    f32 = judge.Calibrated(4.0, 1e-9, "model_logits.f32")
    for model, measured in (("tiny-headdim", 1.62e-6), ("smollm2", 8.11e-6)):
        env = d.for_model(model).envelope
        c = judge.calibrated_value("logits", measured, 1e-13, f32, "nmse")
        assert judge.with_envelope(c, env, TF32).explained_by == TF32
    # 2e-5 NMSE on tiny-headdim: 12x what TF32 costs it (the old floor 1e-4 let it pass)
    c = judge.calibrated_value("logits", 2e-5, 1e-13, f32, "nmse")
    assert judge.with_envelope(c, d.for_model("tiny-headdim").envelope, TF32).counts_against


def test_a_table_with_both_kinds_of_envelope_is_refused(tmp_path):
    import pytest

    table = tmp_path / "mine.toml"
    table.write_text('''[[defect]]
id = "x"
device = "cpu"
kind = "accuracy"
nodeid = "*"
reason = "r"
evidence = "e"
envelope = { k = 2.0 }
[defect.envelope_by_model]
"tiny-gqa" = { k = 3.0 }
''')
    with pytest.raises(pytest.UsageError, match="envelope or envelope_by_model"):
        defects.load(table)
    table.write_text(table.read_text().replace("envelope = { k = 2.0 }\n", "").replace(
        "{ k = 3.0 }", "{ frob = 3.0 }"))
    with pytest.raises(pytest.UsageError, match="frob"):
        defects.load(table)
