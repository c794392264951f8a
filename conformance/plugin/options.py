"""Command-line options of the suite (`pytest --help`, group "infinilm conformance"), and
their validation where they enter: `validate` runs first in the plugin's pytest_configure,
before any check runs and before a run directory exists. A bad value (a negative timeout,
an empty --model, an unreadable policy file) is one line naming the option (or the
environment variable that supplied it) and the value, and pytest exits with status 4."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

ALL_DTYPES = ("f32", "f16", "bf16")
KNOWN_DEFECTS = Path(__file__).resolve().parent.parent / "known_defects.toml"
ISOLATE = ("auto", "yes", "no")
BENCH_SCALES = ("auto", "smoke", "cpu", "full")
# option -> the environment variable its default comes from (named in an error about it)
ENV = {"--infini-device": "INFINILM_DEVICE", "--dtype": "INFINILM_DTYPES",
       "--isolate": "INFINILM_ISOLATE", "--check-timeout": "INFINILM_CHECK_TIMEOUT",
       "--sweep-seed": "INFINILM_SWEEP_SEED", "--sweep-cases": "INFINILM_SWEEP_CASES",
       "--bench-scale": "INFINILM_BENCH_SCALE", "--model": "INFINILM_MODELS"}


def pytest_addoption(parser: pytest.Parser) -> None:
    # Values arrive as strings (from the command line or the environment) and are converted
    # and checked by `validate`, so that every bad value gets the same one-line error.
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
    g.addoption("--tolerances", default=None, metavar="FILE",
                help="TOML file overriding entries of conformance/tolerances.toml (its "
                     "checks and dtypes only; each entry whole)")
    g.addoption("--report-dir", default=None, metavar="DIR",
                help="where run directories are written (default: <rootdir>/reports)")
    g.addoption("--known-defects", action="append", default=[], metavar="FILE",
                help="a TOML table of defects and their envelopes, stacked on the shipped "
                     "conformance/known_defects.toml (repeatable: a later file adds entries "
                     "and replaces an earlier entry of the same id)")
    g.addoption("--no-shipped-defects", action="store_true",
                help="leave out the shipped conformance/known_defects.toml (only the "
                     "--known-defects files apply)")
    g.addoption("--fail-on-unsupported", action="store_true",
                help="count an op/dtype the backend does not support as a failure")
    g.addoption("--isolate", default=os.environ.get("INFINILM_ISOLATE", "auto"),
                metavar="{auto,yes,no}",
                help="run the checks in a supervised child process, so that a crashing "
                     "kernel (a segfault, an abort, a hang) is a 'crashed' check and the run "
                     "goes on, timed benchmarks included (auto: yes, except under "
                     "--pdb/--trace)")
    g.addoption("--check-timeout", default=os.environ.get("INFINILM_CHECK_TIMEOUT", "900"),
                metavar="SECONDS",
                help="seconds (> 0) a single check may run under --isolate before it is "
                     "killed and recorded as crashed (timeout); default 900")
    g.addoption("--no-reference-cache", action="store_true",
                help="compute transformers' golden and reference outputs anew: shared by "
                     "the checks and workers of this run only, nothing reused from earlier "
                     "runs (default: reused from ~/.cache/infinilm-models/reference when "
                     "checkpoint, inputs, dtype, device and torch/transformers versions match)")
    g.addoption("--sweep-seed", default=os.environ.get("INFINILM_SWEEP_SEED", "20261130"),
                metavar="N", help="seed (>= 0) of the sampled op sweeps (recorded in every "
                                  "sweep case)")
    g.addoption("--sweep-cases", default=os.environ.get("INFINILM_SWEEP_CASES", "0"),
                metavar="N",
                help="cases per op and dtype drawn by the sampled sweeps (0: the default "
                     "sized for a 2-core CPU run)")
    g.addoption("--bench-scale", default=os.environ.get("INFINILM_BENCH_SCALE", "auto"),
                metavar="{auto,smoke,cpu,full}",
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
    return _dtypes(config.getoption("--dtype"), _named("--dtype", config.getoption("--dtype"),
                                                       os.environ))


def _dtypes(value: Any, name: str) -> list[str]:
    values = [d.strip().lower() for d in str(value).split(",") if d.strip()]
    bad = [d for d in values if d not in ALL_DTYPES]
    if bad or not values:
        raise pytest.UsageError(f"{name}: unknown {bad or values}; choose from {ALL_DTYPES}")
    return values


def _named(option: str, value: Any, env: Mapping[str, str]) -> str:
    """How an error names the option: with the environment variable when the value came
    from there."""
    var = ENV.get(option)
    if var and var in env and str(value) == env[var]:
        return f"{option} (from ${var})"
    return option


def _fail(option: str, value: Any, env: Mapping[str, str], problem: str) -> pytest.UsageError:
    return pytest.UsageError(f"{_named(option, value, env)} {str(value)!r}: {problem}")


def _number(option: str, value: Any, env: Mapping[str, str], kind: type, low: float,
            inclusive: bool = True) -> Any:
    """`value` (a string from the command line or the environment, or already converted)
    as an int or a finite float >= low (> low unless inclusive)."""
    bound = f"{'>=' if inclusive else '>'} {low:g}"
    what = f"expected {'an integer' if kind is int else 'a finite number'} {bound}"
    if isinstance(value, bool):
        raise _fail(option, value, env, what)
    try:
        number = kind(str(value).strip()) if isinstance(value, str) else kind(value)
    except (TypeError, ValueError, OverflowError):
        raise _fail(option, value, env, what) from None
    if kind is int and isinstance(value, float) and value != number:
        raise _fail(option, value, env, what)
    if (kind is float and not math.isfinite(number)) or number < low or \
            (not inclusive and number == low):
        raise _fail(option, value, env, what)
    return number


def _path(option: str, value: Any, env: Mapping[str, str]) -> Path:
    if value is None or not str(value).strip():
        raise _fail(option, "" if value is None else value, env, "an empty path")
    return Path(str(value)).expanduser()


def _model(value: Any, env: Mapping[str, str]) -> str | None:
    """--model (or $INFINILM_MODELS): each name a fixture or an existing directory."""
    if value is None:
        value = env.get("INFINILM_MODELS") or None
        if value is None:
            return None
    from infinilm_fixtures.tiny import VARIANTS

    fixtures = [f"tiny-{v}" for v in VARIANTS] + ["smollm2"]
    names = [m.strip() for m in str(value).split(",")]
    if not any(names):
        raise _fail("--model", value, env, "names no checkpoint (give fixture names or "
                    "directories, comma-separated)")
    for name in names:
        if not name:
            raise _fail("--model", value, env, "an empty name between commas")
        if name not in fixtures and not Path(name).expanduser().is_dir():
            what = "a file" if Path(name).expanduser().exists() else "no such directory"
            raise _fail("--model", value, env, f"{name!r} is neither a fixture name "
                        f"({', '.join(fixtures)}) nor a checkpoint directory ({what})")
    return str(value)


def _choice(option: str, value: Any, env: Mapping[str, str], choices: tuple[str, ...]) -> str:
    if str(value) not in choices:
        raise _fail(option, value, env, f"choose from {', '.join(choices)}")
    return str(value)


def checked(values: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The suite's option values converted and checked; a bad one raises pytest.UsageError
    naming the option and the value. `values`: option name -> value as parsed (strings),
    `env`: the environment the defaults came from. Policy files are read here too, so a
    missing or malformed one stops the run before it starts."""
    out: dict[str, Any] = {}
    device = values.get("--infini-device")
    if device is None or not str(device).strip():
        raise _fail("--infini-device", device or "", env, "an empty device (e.g. cpu, "
                    "nvidia, nvidia:1)")
    out["--infini-device"] = str(device).strip()
    _dtypes(values.get("--dtype"), _named("--dtype", values.get("--dtype"), env))
    out["--model"] = _model(values.get("--model"), env)
    out["--isolate"] = _choice("--isolate", values.get("--isolate"), env, ISOLATE)
    out["--bench-scale"] = _choice("--bench-scale", values.get("--bench-scale"), env,
                                   BENCH_SCALES)
    out["--check-timeout"] = _number("--check-timeout", values.get("--check-timeout"), env,
                                     float, 0.0, inclusive=False)
    out["--sweep-seed"] = _number("--sweep-seed", values.get("--sweep-seed"), env, int, 0)
    out["--sweep-cases"] = _number("--sweep-cases", values.get("--sweep-cases"), env, int, 0)
    report = values.get("--report-dir")
    if report is not None:
        report = _path("--report-dir", report, env)
        if report.exists() and not report.is_dir():
            raise _fail("--report-dir", values["--report-dir"], env, "exists and is not a "
                        "directory")
    out["--report-dir"] = report
    out["--known-defects"] = [_path("--known-defects", p, env)
                              for p in values.get("--known-defects") or []]
    tolerances = values.get("--tolerances")
    if tolerances is not None:
        tolerances = _path("--tolerances", tolerances, env)
        from ..judge import TolerancePolicy

        try:
            TolerancePolicy.load(tolerances)
        except (OSError, ValueError) as e:
            raise pytest.UsageError("--tolerances " + str(e).removeprefix("tolerance file "))\
                from None
    out["--tolerances"] = tolerances
    return out


def validate(config: pytest.Config) -> None:
    """Check every option of the suite and store the converted values back (so every
    reader, xdist workers included, gets numbers and paths)."""
    names = ("--infini-device", "--dtype", "--model", "--isolate", "--bench-scale",
             "--check-timeout", "--sweep-seed", "--sweep-cases", "--report-dir",
             "--known-defects", "--tolerances")
    values = checked({n: config.getoption(n) for n in names}, os.environ)
    for name, value in values.items():
        if name == "--model" and config.getoption("--model") is None:
            continue  # from $INFINILM_MODELS or the default set: read where it is used
        setattr(config.option, name.lstrip("-").replace("-", "_"), value)
