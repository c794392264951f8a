"""Real conformance runs for the report self-tests: each fixture runs a few fast checks of
the suite in an inner pytest process (as CI would) and hands back its run directory, so
the report, compare and merge are tested on results the plugin actually recorded. The
helpers the self-tests share are plain modules: runs.py (inner runs), synthetic.py
(records built directly)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .runs import FAST_OPS, HOSTILE_DIR, STRICT_TOLERANCES, inner_run


@pytest.fixture(scope="session")
def op_runs(tmp_path_factory) -> dict[str, Path]:
    """f32 and bf16 runs of the same op checks, and an f32 run whose rms_norm fails."""
    base = tmp_path_factory.mktemp("op-runs")
    strict = base / "strict.toml"
    strict.write_text(STRICT_TOLERANCES)
    return {
        "f32": inner_run(base / "reports", *FAST_OPS, "--dtype", "f32", expect=(0,)),
        "bf16": inner_run(base / "reports", *FAST_OPS, "--dtype", "bf16", expect=(0,)),
        "f32_strict": inner_run(base / "reports", *FAST_OPS, "--dtype", "f32",
                                f"--tolerances={strict}", expect=(1,)),
    }


@pytest.fixture(scope="session")
def report_run(tmp_path_factory) -> Path:
    """A small mixed run rendered by the plugin: op checks (rms_norm failing for real) and
    the activation check of a tiny model living under a directory named like markup."""
    from infinilm_fixtures.tiny import ensure

    base = tmp_path_factory.mktemp("report-run")
    model = base.joinpath(*HOSTILE_DIR)
    shutil.copytree(ensure("mha"), model)
    strict = base / "strict.toml"
    strict.write_text(STRICT_TOLERANCES)
    return inner_run(base / "reports", *FAST_OPS, "conformance/model/test_model_activations.py",
                     "--dtype", "f32", f"--model={model}", f"--tolerances={strict}",
                     expect=(1,))
