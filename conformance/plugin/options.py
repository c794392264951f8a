"""Command-line options of the suite (`pytest --help`, group "infinilm conformance")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ALL_DTYPES = ("f32", "f16", "bf16")
KNOWN_DEFECTS = Path(__file__).resolve().parent.parent / "known_defects.toml"


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("infinilm conformance", "InfiniCore LLaMA conformance suite")
    g.addoption("--infini-device", default=os.environ.get("INFINILM_DEVICE", "cpu"),
                help="InfiniCore device to test, e.g. cpu, nvidia, nvidia:1 (default: "
                     "$INFINILM_DEVICE or cpu). Also picks the InfiniCore build: the default "
                     "prefix of that backend, unless INFINI_ROOT names one")
    g.addoption("--dtype", default=os.environ.get("INFINILM_DTYPES", ",".join(ALL_DTYPES)),
                help="comma-separated dtypes to check: f32,f16,bf16 (default: all three)")
    g.addoption("--model", default=None,
                help="comma-separated checkpoints for the model-level checks: fixture names "
                     "(tiny-mha, tiny-gqa, ..., smollm2) or local HF LLaMA directories "
                     "(default: $INFINILM_MODELS or every tiny fixture plus smollm2)")
    g.addoption("--tolerances", type=Path, default=None,
                help="TOML file overriding entries of conformance/tolerances.toml")
    g.addoption("--report-dir", type=Path, default=None,
                help="where run directories are written (default: <rootdir>/reports)")
    g.addoption("--known-defects", type=Path, action="append", default=[], metavar="FILE",
                help="a TOML table of defects and their envelopes, stacked on the shipped "
                     "conformance/known_defects.toml (repeatable: a later file adds entries "
                     "and replaces an earlier entry of the same id)")
    g.addoption("--no-shipped-defects", action="store_true",
                help="leave out the shipped conformance/known_defects.toml (only the "
                     "--known-defects files apply)")
    g.addoption("--fail-on-unsupported", action="store_true",
                help="count an op/dtype the backend does not support as a failure")
    g.addoption("--isolate", default=os.environ.get("INFINILM_ISOLATE", "auto"),
                choices=("auto", "yes", "no"),
                help="run the checks in a supervised child process, so that a crashing "
                     "kernel (a segfault, an abort, a hang) is a 'crashed' check and the run "
                     "goes on, timed benchmarks included (auto: yes, except under "
                     "--pdb/--trace)")
    g.addoption("--check-timeout", type=float,
                default=float(os.environ.get("INFINILM_CHECK_TIMEOUT", "900")),
                help="seconds a single check may run under --isolate before it is killed "
                     "and recorded as crashed (timeout); default 900")
    g.addoption("--no-reference-cache", action="store_true",
                help="compute transformers' golden and reference outputs anew: shared by "
                     "the checks and workers of this run only, nothing reused from earlier "
                     "runs (default: reused from ~/.cache/infinilm-models/reference when "
                     "checkpoint, inputs, dtype, device and torch/transformers versions match)")
    g.addoption("--sweep-seed", type=int, default=int(os.environ.get("INFINILM_SWEEP_SEED",
                                                                      "20261130")),
                help="seed of the sampled op sweeps (recorded in every sweep case)")
    g.addoption("--sweep-cases", type=int, default=int(os.environ.get("INFINILM_SWEEP_CASES",
                                                                       "0")),
                help="cases per op and dtype drawn by the sampled sweeps (0: the default "
                     "sized for a 2-core CPU run)")
    g.addoption("--bench-scale", default=os.environ.get("INFINILM_BENCH_SCALE", "auto"),
                choices=("auto", "smoke", "cpu", "full"),
                help="sizes of the conformance/perf benchmarks: smoke (tiny, for runs with "
                     "timing disabled), cpu (reduced, fits a 2-core CPU), full (the issue's "
                     "SmolLM2-135M shapes, for GPUs); auto picks smoke when timing is "
                     "disabled, else cpu or full by device")


    _bringup_options(g)


def _bringup_options(g) -> None:
    """Bring-up tools (conformance/support.py, stages.py, dump.py, gguf_cases.py)."""
    g.addoption("--support", action="store_true",
                help="support probe: run the checks with every InfiniCore call creating its "
                     "descriptor and computing nothing; writes the op x dtype matrix of what "
                     "the build accepts (console, results.json, report, support.md). With "
                     "--model, the checkpoint's own forward is probed too")
    g.addoption("--stages", action="store_true",
                help="run the checks stage by stage (ops, layer, model, parallel, perf) and "
                     "stop after the first stage with a failing check; the later stages' "
                     "checks are recorded not_run naming it (serial runs only)")
    g.addoption("--dump-tensors", type=Path, default=None, metavar="DIR",
                help="for each failing model check, write ours, the golden and the "
                     "reference at every capture point of the first failing layer and its "
                     "input as .npz, with an index and the command reproducing the check")
    g.addoption("--infiniop-cases", choices=("failing", "all"), default="failing",
                help="which op checks get an infiniop-test GGUF case file (InfiniCore's own "
                     "runner): failing (in their replay bundle; default) or all (also under "
                     "<run>/infiniop-test/)")


def dtypes(config: pytest.Config) -> list[str]:
    values = [d.strip().lower() for d in str(config.getoption("--dtype")).split(",")
              if d.strip()]
    bad = [d for d in values if d not in ALL_DTYPES]
    if bad or not values:
        raise pytest.UsageError(f"--dtype: unknown {bad or values}; choose from {ALL_DTYPES}")
    return values
