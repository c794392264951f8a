"""The harness's own speed, measured as benchmarks (never asserted in a test): rendering
the report of a large run, and refusing a config that claims a million layers (the error
once listed every missing tensor: 505 MB, minutes). The tests that check what these
produce are tests/test_loading.py and conformance/selftest/test_report.py."""

from __future__ import annotations

import json
import shutil

from conformance.report.render import render_run
from conformance.results import atomic_write_text
from conformance.selftest.synthetic import synthetic_run


def test_perf_report_render_1500_checks(benchmark, tmp_path):
    run = synthetic_run(scale=120)
    assert len(run.results) > 1400
    (tmp_path / "run").mkdir()
    atomic_write_text(tmp_path / "run" / "results.json", run.to_json())
    benchmark.group = "harness-report"
    benchmark.extra_info.update(checks=len(run.results))
    benchmark.pedantic(render_run, args=(tmp_path / "run",), rounds=3, iterations=1)
    assert (tmp_path / "run" / "index.html").is_file()


def test_perf_config_error_for_a_million_layers(benchmark, tmp_path):
    from infinilm_fixtures.tiny import ensure
    from infinilm_models import AutoLlamaModel
    from infinilm_models.models.llama.loading import CheckpointError

    model_dir = tmp_path / "mha"
    shutil.copytree(ensure("mha"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["num_hidden_layers"] = 10**6
    (model_dir / "config.json").write_text(json.dumps(config))

    def refuse() -> str:
        try:
            AutoLlamaModel.from_pretrained(model_dir, "cpu", "f32", progress=False)
        except CheckpointError as e:
            return str(e)
        raise AssertionError("a config claiming 10^6 layers loaded")

    benchmark.group = "harness-loading"
    message = benchmark.pedantic(refuse, rounds=3, iterations=1)
    assert len(message) < 4000
