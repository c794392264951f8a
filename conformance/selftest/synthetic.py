"""Records built directly, without a run: every status and field the report shows."""

from __future__ import annotations


def _points(layers: int) -> list[tuple[str, int | None, str]]:
    """Capture points of a model in execution order (as the model checks record them)."""
    pts = [("embed_tokens", None, "embedding")]
    for i in range(layers):
        pts += [(f"layers.{i}.self_attn", i, "attention"),
                (f"layers.{i}.key_cache", i, "kv cache"),
                (f"layers.{i}.value_cache", i, "kv cache"),
                (f"layers.{i}.residual_attn", i, "attention residual"),
                (f"layers.{i}.mlp", i, "mlp"), (f"layers.{i}", i, "mlp residual")]
    return pts + [("norm", None, "final norm")]


def _per_tensor(layers: int, phase: str, step: int | None, bad_layer: int | None,
                isolated_bad: bool) -> list:
    from conformance.record import ErrorPoint, TensorRow

    rows = []
    for name, layer, sub in _points(layers):
        grow = 1.0 if bad_layer is None or layer is None or layer < bad_layer else 50.0
        acc = ErrorPoint(1e-7 * grow * (1 + (layer or 0)), 1e-7, 2e-6, passed=grow == 1.0,
                         gate_threshold=1e-4, within_strict=grow == 1.0)
        iso = None
        if sub in ("attention", "mlp", "kv cache", "final norm"):
            wrong = isolated_bad and layer == bad_layer and sub == "mlp"
            iso = ErrorPoint(3e-3 if wrong else 5e-8, 4e-8, 1e-6, passed=not wrong)
        rows.append(TensorRow(phase=phase, step=step, tensor=name, layer=layer,
                              submodule=sub, accumulated=acc, isolated=iso))
    return rows


def synthetic_run(scale: int = 1):
    """A RunRecord holding every status, comparison kind, a localization (prefill and a
    decode-only one), a crash with a bundle, not-run checks, findings and perf info.
    `scale` multiplies the op cases (scale=40: ~1500 checks)."""
    from conformance.record import (
        Amplification,
        Bound,
        CheckRecord,
        Comparison,
        Crash,
        DefectRef,
        ErrorPoint,
        Localization,
        Measurement,
        PerfSample,
        RunRecord,
        summarize,
        verdict_of,
    )

    ew = Bound("elementwise", "gemm.bf16", atol=1e-2, rtol=1e-2, nmse=1e-5)
    ok = {"max_abs": 1e-3, "max_rel": 1e-3, "mean_abs": 1e-4, "nmse": 1e-7,
          "sqnr_db": 70.0, "cosine": 1.0}
    recs = []

    def op(op_name, dtype, case, status="passed", **kw):
        check = "op_elementwise" if op_name in ("add", "mul") else f"op_{op_name}"
        params = {"dtype": dtype, "case": case}
        if check == "op_elementwise":
            params["op"] = op_name
        nodeid = f"conformance/ops/test_{check}.py::test_{check}[{dtype}-{case}" + (
            f"-{op_name}]" if "op" in params else "]")
        recs.append(CheckRecord(
            nodeid=nodeid, check=check, test=kw.pop("test", f"test_{check}"),
            status=status, params=params, dtype=dtype, op=op_name, case=case,
            comparisons=kw.pop("comparisons", [Comparison(
                "output", True, "output: within", dict(ok), ew)]), **kw))

    for i in range(scale):
        for dtype in ("f32", "bf16"):
            for name in ("add", "mul", "rms_norm", "gemm", "rope", "swiglu"):
                op(name, dtype, f"case{i}")
    # add: a rounding property that fails (the run) and one within a known defect.
    op("add", "f32", "rounding", "failed", test="test_op_elementwise_rounding",
       message="correctly rounded: not correctly rounded: 3 of 64 results differ",
       comparisons=[Comparison(
           "correctly rounded", False, "correctly rounded: not correctly rounded: 3 of 64 "
           "results differ from round-to-nearest-even by up to 1 ulp",
           {"mismatches": 3.0, "fraction": 0.046875, "max_ulp": 1.0, "below": 3.0,
            "above": 0.0, "toward_zero": 1.0},
           Bound("exact", "IEEE 754 round to nearest even", max_ulp=0), kind="property")])
    op("mul", "bf16", "rounding", "known_defect", test="test_op_elementwise_rounding",
       known_defect=DefectRef("demo-mul-rtz", "property", "mul rounds toward zero"),
       comparisons=[Comparison(
           "correctly rounded", False, "correctly rounded: 2 of 64 differ [inside the "
           "envelope of known defect demo-mul-rtz: within 1 ulp]",
           {"mismatches": 2.0, "fraction": 0.03125, "max_ulp": 1.0, "toward_zero": 1.0},
           Bound("exact", "IEEE 754 round to nearest even", max_ulp=0), kind="property",
           explained_by="demo-mul-rtz",
           envelope=Bound("exact", "demo-mul-rtz", max_ulp=1))])
    # gemm bf16: a failure with a bundle, a crash with a bundle, and one that did not run.
    op("gemm", "bf16", "wide", "failed", bundle="bundles/test_op_gemm_bf16-wide_",
       message="output: 12 of 4096 elements outside atol=0.01 rtol=0.01",
       comparisons=[Comparison("output", False, "output: 12 of 4096 elements outside",
                               {**ok, "max_abs": 0.5, "nmse": 3e-4}, ew)])
    op("gemm", "bf16", "huge", "crashed", bundle="bundles/test_op_gemm_bf16-huge_",
       message="crashed: process killed by SIGSEGV; op gemm", comparisons=[],
       crash=Crash("SIGSEGV", -11, op="gemm", last_call="infiniopGemm (_base.py:88 _compute)",
                   traceback='Fatal Python error: Segmentation fault\n  File "_base.py", '
                             'line 88 in _compute'))
    op("gemm", "f32", "late", "not_run", comparisons=[],
       not_run_reason="xdist worker(s) gw1 died and were not replaced",
       message="not run: xdist worker(s) gw1 died and were not replaced")
    op("rope", "bf16", "odd", "unsupported", comparisons=[],
       message="infiniopCreateRoPEDescriptor: BAD_TENSOR_DTYPE")
    # causal_softmax: a finding that does not hold in a passing check.
    op("causal_softmax", "f32", "prefill", comparisons=[
        Comparison("output", True, "output: within", dict(ok), ew),
        Comparison("masked positions exactly 0", False, "masked positions: 5 masked positions "
                   "hold a subnormal (max 1e-40) instead of 0", {"nonzero": 5.0,
                                                                 "max_abs": 1e-40},
                   Bound("exact", "finding: exact zeros"), kind="finding")])

    for model in ("tiny-mha", "tiny-gqa"):
        for dtype in ("f32", "bf16"):
            mid = f"{dtype}-{model}"
            bad = model == "tiny-gqa" and dtype == "bf16"
            cal = Bound("calibrated", f"model_logits.{dtype}", k=4.0, floor=1e-6,
                        reference=1e-5, threshold=4.1e-5, metric="nmse")
            recs.append(CheckRecord(
                nodeid=f"conformance/model/test_model_logits.py::test_model_logits[{mid}]",
                check="model_logits", test="test_model_logits", status="passed",
                params={"dtype": dtype, "model_name": model}, dtype=dtype, model=model,
                comparisons=[Comparison("last token", True, "nmse ok",
                                        {**ok, "reference_nmse": 1e-5}, cal)],
                measurements=[Measurement("perplexity", {"ours": 12.5})]))
            loc = [Localization("prefill", "layers.1.mlp", "mlp", ["rms_norm", "gemm", "swiglu"],
                                5e-4, 2e-6, "layer 1 mlp output diverges", layer=1,
                                isolated=True, origin="starts here")] if bad else []
            recs.append(CheckRecord(
                nodeid=f"conformance/model/test_model_activations.py::"
                       f"test_model_activations[{mid}]",
                check="model_activations", test="test_model_activations",
                status="failed" if bad else "passed",
                params={"dtype": dtype, "model_name": model}, dtype=dtype, model=model,
                message="layers.1.mlp: NMSE 5e-4 > 1e-4" if bad else "",
                comparisons=[Comparison("activations", not bad, "per-tensor NMSE",
                                        {"nmse": 5e-4 if bad else 1e-7}, cal)],
                localization=loc,
                tensors=_per_tensor(2, "prefill", None, 1 if bad else None, bad),
                amplification=None if bad else Amplification(
                    "layers.1.mlp", "mlp", 3e-6, 2e-6, layer=1,
                    isolated=ErrorPoint(5e-8, 4e-8, 1e-6, passed=True))))
            dec_bad = model == "tiny-mha" and dtype == "bf16"
            rows = _per_tensor(2, "prefill", None, None, False)
            for step in range(3):
                rows += _per_tensor(2, "decode", step, 0 if dec_bad and step == 2 else None,
                                    False)
            recs.append(CheckRecord(
                nodeid=f"conformance/model/test_model_decode.py::test_model_decode[{mid}]",
                check="model_decode", test="test_model_decode",
                status="failed" if dec_bad else "passed",
                params={"dtype": dtype, "model_name": model}, dtype=dtype, model=model,
                localization=[Localization(
                    "decode", "layers.0.self_attn", "attention",
                    ["rms_norm", "gemm", "rope", "rearrange", "causal_softmax"], 2e-5, 2e-6,
                    "decode step 2: layer 0 attention diverges", layer=0, step=2,
                    isolated=False, origin="arrives from earlier layers")] if dec_bad else [],
                tensors=rows))
    # A crashed model check carries its case; not-run checks in the model matrix.
    recs.append(CheckRecord(
        nodeid="conformance/model/test_model_cache.py::test_model_cache[bf16-tiny-gqa]",
        check="model_cache", test="test_model_cache", status="crashed",
        params={"dtype": "bf16", "model_name": "tiny-gqa"}, dtype="bf16", model="tiny-gqa",
        message="crashed: no result within 900 s (killed)",
        crash=Crash("SIGABRT", -6, timeout=True, op="causal_softmax",
                    last_call="infiniopCausalSoftmax (_base.py:88 _compute)")))
    recs.append(CheckRecord(
        nodeid="conformance/model/test_model_cache.py::test_model_cache[f32-tiny-gqa]",
        check="model_cache", test="test_model_cache", status="not_run",
        params={"dtype": "f32", "model_name": "tiny-gqa"}, dtype="f32", model="tiny-gqa",
        not_run_reason="the run was interrupted before this check"))
    recs.append(CheckRecord(
        nodeid="conformance/perf/test_perf_model.py::test_perf_decode[f32-b1-ours]",
        check="perf_model", test="test_perf_decode", status="passed",
        params={"dtype": "f32", "decode_batch": 1, "impl": "ours"}, dtype="f32",
        perf=PerfSample("decode-b1", "ours", {"mean_s": 0.012, "tokens_per_s": 830.0,
                                              "time_ratio_vs_hf": 0.8})))
    recs.append(CheckRecord(
        nodeid="known_defects.toml::demo-fixed", check="known_defects", test="demo-fixed",
        status="failed", message="known defect demo-fixed no longer shows (XPASS)",
        known_defect=DefectRef("demo-fixed", "accuracy", "fixed upstream?")))
    recs.append(CheckRecord(
        nodeid="conformance/selftest/test_x.py::test_setup", check="selftest_x",
        test="test_setup", status="error", message="setup: RuntimeError: fixture exploded"))
    recs.sort(key=lambda r: r.nodeid)
    return RunRecord(
        run_id="20261130-000000-cpu-1", verdict=verdict_of(recs), counts=summarize(recs),
        started_at="2026-11-30T00:00:00+0000", duration_s=1.0, pytest_exit_status=1,
        environment={"infini_device": "cpu", "device_name": "synthetic"}, results=recs,
        planned=len(recs), dtypes=["f32", "bf16"])
