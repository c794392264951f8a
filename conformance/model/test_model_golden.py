"""The golden itself: the run every model check measures both sides against must be far
more accurate than anything it judges. Where it runs on the device (float64 on a GPU, for
speed), it is checked here against float64 on the CPU; on a CPU run (float32 on the CPU,
the numbers CPU runs have always been judged by) its own float32 error is measured
against float64 the same way. Logits and every captured tensor of one prefill."""

from __future__ import annotations

from conformance.judge import token_nmse

from .harness import golden_placement, hf_forward, reference
from .prompts import prompt_ids


def test_model_golden(model_name, model_path, infini_device, verify):
    gdtype, gdevice = golden_placement(str(infini_device))
    golden = reference(str(model_path), gdtype, gdevice)
    exact = reference(str(model_path), "f64", "cpu")
    ids = prompt_ids(model_path, 1, 16, verify)
    g, x = hf_forward(golden, ids), hf_forward(exact, ids)
    verify.param(golden=golden.describe(), against=exact.describe())
    worst = max(((name, token_nmse(g[name], x[name])) for name in x if name in g),
                key=lambda kv: kv[1])
    verify.measure("the golden's worst captured tensor vs float64 on the CPU",
                   {"nmse": worst[1]}, note=worst[0])
    verify.calibrated_value("golden logits vs float64 on the CPU",
                            token_nmse(g["logits"], x["logits"]), 0.0, "golden", gdtype,
                            "nmse")
    verify.calibrated_value(f"golden's worst captured tensor ({worst[0]}) vs float64 on the "
                            "CPU", worst[1], 0.0, "golden", gdtype, "nmse")
