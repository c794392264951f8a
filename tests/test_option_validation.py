"""Options and policy files are checked where they enter (issue 30.2).

Each bad value of the pytest plugin's options, and each policy file (--tolerances,
--known-defects) that cannot be read or names a section, check, dtype or field the harness
does not know, is one line naming the option (or file) and the value (or key), pytest's
usage-error status 4, and no run directory: shown end to end on a real pytest process with
--report-dir in tmp_path for one case of each kind (about 1 s of CPU each: the check runs
before torch is imported), and for every case on `options.checked` and the policy loaders,
the code that process runs, in this one.
The CLIs (`infinilm-conformance`, `python -m infinilm_models`, `python -m
conformance.replay`) refuse a bad option in one line with status 2.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = "conformance/ops/test_op_rms_norm.py"


def run_suite(tmp_path: Path, *args: str, env: dict[str, str] | None = None
              ) -> tuple[int, list[str], Path]:
    """pytest on one check file with `args`; (status, non-blank output lines, report dir)."""
    reports = tmp_path / "reports"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
         "-p", "no:xdist", "-p", "no:benchmark", f"--report-dir={reports}", CHECK, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    lines = [x for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
    return proc.returncode, lines, reports


def refused(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """The one line of a refused run; asserts status 4 and that no run directory exists."""
    status, lines, reports = run_suite(tmp_path, *args, env=env)
    assert status == 4, "\n".join(lines[-20:])
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), "\n".join(lines[-20:])
    assert not reports.exists() or reports.is_file()  # nothing half-written
    return lines[0]


# -- options -------------------------------------------------------------------------------

DEFAULTS = {"--infini-device": "cpu", "--dtype": "f32,f16,bf16", "--model": None,
            "--isolate": "auto", "--bench-scale": "auto", "--check-timeout": "900",
            "--sweep-seed": "20261130", "--sweep-cases": "0", "--report-dir": None,
            "--known-defects": [], "--tolerances": None}
OPTIONS = [  # (option, value, the message's words); e2e: also run as a real pytest process
    ("--check-timeout", "-5", "--check-timeout '-5': expected a finite number > 0", True),
    ("--check-timeout", "0", "--check-timeout '0': expected a finite number > 0", False),
    ("--check-timeout", "nan", "--check-timeout 'nan': expected a finite number > 0", False),
    ("--check-timeout", "soon", "--check-timeout 'soon': expected a finite number > 0", False),
    ("--model", "", "--model '': names no checkpoint", True),
    ("--model", "tiny-gqa,,smollm2", "--model 'tiny-gqa,,smollm2': an empty name", False),
    ("--model", "/no/such/llama", "'/no/such/llama' is neither a fixture name", True),
    ("--model", "tiny-nope", "'tiny-nope' is neither a fixture name", False),
    ("--sweep-cases", "-1", "--sweep-cases '-1': expected an integer >= 0", True),
    ("--sweep-cases", "2.5", "--sweep-cases '2.5': expected an integer >= 0", False),
    ("--sweep-seed", "x", "--sweep-seed 'x': expected an integer >= 0", False),
    ("--isolate", "maybe", "--isolate 'maybe': choose from auto, yes, no", False),
    ("--bench-scale", "huge", "--bench-scale 'huge': choose from auto, smoke, cpu, full", False),
    ("--dtype", "f64", "--dtype: unknown ['f64']", False),
    ("--dtype", "", "--dtype: unknown []", False),
    ("--infini-device", "", "--infini-device '': an empty device", False),
    ("--known-defects", [""], "--known-defects '': an empty path", False),
    ("--tolerances", "", "--tolerances '': an empty path", False),
    ("--report-dir", "", "--report-dir '': an empty path", True),
]


def _check(**override):
    from conformance.plugin.options import checked

    return checked({**DEFAULTS, **override}, {})


@pytest.mark.parametrize(("option", "value", "expected"), [c[:3] for c in OPTIONS],
                         ids=[f"{c[0]}={c[1]}" for c in OPTIONS])
def test_a_bad_option_is_refused_naming_option_and_value(option, value, expected) -> None:
    with pytest.raises(pytest.UsageError) as e:
        _check(**{option: value})
    assert expected in str(e.value) and "\n" not in str(e.value)


E2E = [c for c in OPTIONS if c[3]]


@pytest.mark.parametrize(("option", "value", "expected"), [c[:3] for c in E2E],
                         ids=[f"{c[0]}={c[1]}" for c in E2E])
def test_a_bad_option_is_one_line_and_no_run(tmp_path: Path, option, value, expected) -> None:
    assert expected in refused(tmp_path, f"{option}={value}")


def test_good_values_are_converted() -> None:
    got = _check(**{"--check-timeout": "60.5", "--sweep-cases": "3", "--model": "tiny-gqa",
                    "--known-defects": ["a.toml"]})
    assert got["--check-timeout"] == 60.5 and got["--sweep-cases"] == 3
    assert got["--known-defects"] == [Path("a.toml")] and got["--model"] == "tiny-gqa"
    assert _check(**{"--check-timeout": 60.5, "--sweep-cases": 3}) == \
        _check(**{"--check-timeout": "60.5", "--sweep-cases": "3"})  # xdist: twice is fine


def test_a_report_dir_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "reports"
    target.write_text("not a folder")
    line = refused(tmp_path, f"--report-dir={target}")
    assert f"--report-dir '{target}': exists and is not a directory" in line
    assert target.read_text() == "not a folder"


@pytest.mark.parametrize(("var", "value", "expected"), [
    ("INFINILM_CHECK_TIMEOUT", "abc", "--check-timeout (from $INFINILM_CHECK_TIMEOUT) 'abc'"),
    ("INFINILM_SWEEP_CASES", "-4", "--sweep-cases (from $INFINILM_SWEEP_CASES) '-4'"),
    ("INFINILM_ISOLATE", "sometimes", "--isolate (from $INFINILM_ISOLATE) 'sometimes'"),
    ("INFINILM_MODELS", "/no/such/llama", "--model (from $INFINILM_MODELS) '/no/such/llama'"),
])
def test_a_bad_default_from_the_environment_names_the_variable(var, value, expected) -> None:
    from conformance.plugin.options import ENV, checked

    option = next(o for o, v in ENV.items() if v == var)
    values = {**DEFAULTS, **({} if option == "--model" else {option: value})}
    with pytest.raises(pytest.UsageError, match=re.escape(expected)):
        checked(values, {var: value})


def test_a_bad_default_from_the_environment_end_to_end(tmp_path: Path) -> None:
    line = refused(tmp_path, env={"INFINILM_CHECK_TIMEOUT": "abc"})
    assert "--check-timeout (from $INFINILM_CHECK_TIMEOUT) 'abc'" in line


# -- policy files -------------------------------------------------------------------------

TOLERANCES = {  # case: (file text, the message's words, e2e)
    "not TOML": ("[gemm\n", "not valid TOML", True),
    "unknown section": ("[gemmm]\nf32 = { atol = 1.0, rtol = 1.0 }\n", "[gemmm]: no such check",
                        True),
    "unknown dtype": ("[gemm]\nf64 = { atol = 1.0, rtol = 1.0 }\n",
                      "[gemm] f64: no such dtype for this check", False),
    "unknown field": ("[gemm]\nf32 = { atol = 1.0, rtl = 1.0 }\n",
                      "[gemm] f32.rtl: no such field", False),
    "field of the other kind": ("[model_logits]\nf16 = { atol = 1.0, rtol = 1.0 }\n",
                                "[model_logits] f16.atol: no such field", False),
    "incomplete entry": ("[gemm]\nf32 = { atol = 1.0 }\n", "[gemm] f32: lacks rtol", False),
    "negative bound": ("[gemm]\nf32 = { atol = -1.0, rtol = 1.0 }\n",
                       "[gemm] f32.atol = -1.0: expected a finite number >= 0", False),
    "string bound": ('[gemm]\nf32 = { atol = "1", rtol = 1.0 }\n', "[gemm] f32.atol = '1'",
                     False),
    "not a table": ("gemm = 3\n", "gemm: expected a [gemm] table of dtypes", False),
    "not text": (b"\xff\xfe[gemm]", "not valid TOML", False),
}


def _write(path: Path, text: str | bytes) -> Path:
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


@pytest.mark.parametrize("case", list(TOLERANCES))
def test_a_bad_tolerance_file_names_file_and_key(tmp_path: Path, case: str) -> None:
    text, expected, e2e = TOLERANCES[case]
    path = _write(tmp_path / "mine.toml", text)
    with pytest.raises(pytest.UsageError) as e:
        _check(**{"--tolerances": str(path)})
    line = str(e.value)
    if e2e:
        line = refused(tmp_path, f"--tolerances={path}").removeprefix("ERROR: ")
    assert line.startswith(f"--tolerances {path}: ") and expected in line, line


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_a_tolerance_file_that_cannot_be_read(tmp_path: Path, what: str) -> None:
    path = tmp_path / ("nothing.toml" if what == "missing" else "folder")
    if what == "directory":
        path.mkdir()
    line = refused(tmp_path, f"--tolerances={path}")
    assert f"--tolerances {path}: " + ("not found" if what == "missing"
                                       else "not a regular file") in line


DEFECT = ('[[defect]]\nid = "mine"\ndevice = "cpu"\nkind = "crash"\nnodeid = "x"\n'
          'reason = "r"\nevidence = "e"\n')
DEFECTS = {
    "not TOML": ("[[defect]\n", "not valid TOML", False),
    "unknown section": ('[[defects]]\nid = "x"\n', "[defects]: no such section", True),
    "unknown field": (DEFECT + 'build = ["pypi:0.1.0"]\n',
                      "defect 'mine': build: no such field", False),
    "duplicate id": (DEFECT + "\n" + DEFECT, "defect 'mine': the id is given twice", False),
    "bad envelope": (DEFECT.replace('"crash"', '"accuracy"') + "envelope = { atol = -1 }\n",
                     "defect 'mine': envelope atol = -1", False),
    "empty reason": (DEFECT.replace('reason = "r"', 'reason = ""'),
                     "defect 'mine': reason = '': expected a non-empty string", False),
    "bad build key": (DEFECT + 'builds = ["exports:zz"]\n', "builds must be a list of build keys",
                      False),
    "unknown build field": ('[[build]]\nkey = "pypi:0.1.0"\nname = "n"\ndevices = ["cpu"]\n'
                            'device = "cpu"\n', "build #1: device: no such field", False),
}


@pytest.mark.parametrize("case", list(DEFECTS))
def test_a_bad_defect_table_names_file_and_key(tmp_path: Path, case: str) -> None:
    from conformance.plugin import defects

    text, expected, e2e = DEFECTS[case]
    path = _write(tmp_path / "mine.toml", text)
    with pytest.raises(pytest.UsageError) as e:
        defects.load(path)
        defects.load_builds(path)
    line = str(e.value)
    if e2e:
        line = refused(tmp_path, f"--known-defects={path}").removeprefix("ERROR: ")
    assert line.startswith(f"--known-defects {path}: ") and expected in line, line


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_a_defect_table_that_cannot_be_read(tmp_path: Path, what: str) -> None:
    path = tmp_path / ("nothing.toml" if what == "missing" else "folder")
    if what == "directory":
        path.mkdir()
    line = refused(tmp_path, f"--known-defects={path}")
    assert f"--known-defects {path}: " + ("No such file" if what == "missing"
                                          else "not a regular file") in line


# -- the command-line tools -------------------------------------------------------------


def _one_line_exit(capsys, call, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        call(list(argv))
    assert e.value.code == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(("argv", "expected"), [
    (["compare", "a", "b", "--factor", "-1"], "argument --factor: '-1' is not a finite number"),
    (["compare", "a", "b", "--factor", "nan"], "argument --factor: 'nan'"),
    (["compare", "a", "b", "--perf-tolerance", "-0.1"], "argument --perf-tolerance: '-0.1'"),
    (["compare", "a", "b", "--limit", "-3"], "argument --limit: '-3' is not an integer >= 0"),
    (["compare", "a", "b", "--ignore-param="], "argument --ignore-param: '': an empty value"),
    (["compare", "", "b"], "argument run: '': an empty value"),
    (["compare", "a", "b", "--json", "."], "argument --json: '.' is a directory"),
    (["merge", "a", "-o", ""], "argument -o/--output: '': an empty value"),
    (["report", "a", "-o", "."], "argument -o/--output: '.' is a directory"),
    (["screenshot", "a", "--window-size", "0,10"], "argument --window-size: '0,10'"),
    (["screenshot", "a", "--window-size", "wide"], "argument --window-size: 'wide'"),
])
def test_infinilm_conformance_refuses_a_bad_option(capsys, argv: list[str],
                                                   expected: str) -> None:
    from conformance.report.cli import main

    line = _one_line_exit(capsys, main, *argv)
    assert line.startswith(f"infinilm-conformance {argv[0]}: error: ") and expected in line


@pytest.mark.parametrize(("argv", "expected"), [
    (["--model="], "argument --model: '': an empty value"),
    (["--device="], "argument --device: '': an empty value"),
    (["--dtype="], "argument --dtype: '': an empty value"),
    (["--tp", "two"], "argument --tp: invalid int value: 'two'"),
    (["--top-p", "high"], "argument --top-p: invalid float value: 'high'"),
])  # ranges (--tp 0, --max-cache-len 0, ...) are the library's: tests/test_cli.py
def test_generate_refuses_a_bad_option(capsys, tmp_path: Path, argv: list[str],
                                       expected: str) -> None:
    from infinilm_models.__main__ import main

    base = ["generate", "--model", str(tmp_path), "--token-ids", "1,2"]
    line = _one_line_exit(capsys, main, *base, *argv)
    assert line.startswith("python -m infinilm_models generate: error: ") and expected in line


def test_replay_refuses_a_bad_option_or_bundle(capsys, tmp_path: Path) -> None:
    from conformance.replay import main

    assert "argument --device: '': an empty value" in _one_line_exit(
        capsys, main, str(tmp_path), "--device=")
    assert "argument bundle: '': an empty value" in _one_line_exit(capsys, main, "")
    (tmp_path / "calls.json").write_text("{not json")
    assert main([str(tmp_path)]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and f"{tmp_path / 'calls.json'}: not a replay bundle" in err[0]
