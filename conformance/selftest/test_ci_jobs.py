"""What a CI runner gets: plain tox green on any clone (the upstream run is opt-in), run ids
that name the build, and one artifact per job (latest = the primary run, one scoreboard
linked from every run)."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A run of the real plugin on two trivial checks: what is tested here is the run's
# bookkeeping, not InfiniCore (~6 s a run, most of it importing torch).
TINY = """
def test_tiny(verify, dtype):
    verify.close([1.0, 2.0], [1.0, 2.0], "add", dtype)
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("INFINILM_JOB", "INFINILM_UPSTREAM_SOURCE", "PYTEST_XDIST_WORKER")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def _tox_commands(env: str) -> list[str]:
    """The commands of a tox env as tox.ini writes them, one per line, with the
    {[section]key} references this file uses expanded."""
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "tox.ini")

    def expand(text: str) -> str:
        return re.sub(r"\{\[([^\]]+)\](\w+)\}",
                      lambda m: expand(ini.get(m.group(1), m.group(2))), text)

    text = expand(ini.get(f"testenv:{env}", "commands")).replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_plain_tox_cpu_runs_upstream_only_when_configured_and_passes_under_ci(tmp_path):
    """A fresh clone (no ../shared) under CI=true: the cpu env's upstream command says
    "upstream: not configured" and exits 0, without building or running anything; set to
    a missing path it fails, naming the variable."""
    commands = _tox_commands("cpu")
    assert commands[0].startswith("pytest conformance tests --infini-device cpu")
    upstream = [c for c in commands if "conformance.ci upstream" in c]
    assert len(upstream) == 2, "the suite and the support probe on upstream"
    clone = tmp_path / "clone"  # no ../shared beside it
    clone.mkdir()
    missing = tmp_path / "shared" / "infinicore"
    for command in upstream:
        argv = shlex.split(command.replace("{posargs}", ""))
        assert argv[:4] == ["python", "-m", "conformance.ci", "upstream"]
        # `--` COMMAND is replaced by one that would fail: it must not run.
        at = argv.index("--")
        cmd = [sys.executable, *argv[1:at], "--", sys.executable, "-c", "raise SystemExit(7)"]
        proc = subprocess.run(cmd, cwd=clone, env=_env(CI="true"), capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "upstream: not configured" in proc.stdout
        proc = subprocess.run(cmd, cwd=clone, capture_output=True, text=True, timeout=120,
                              env=_env(CI="true", INFINILM_UPSTREAM_SOURCE=str(missing)))
        assert proc.returncode == 1
        assert f"INFINILM_UPSTREAM_SOURCE={missing}: no such file" in proc.stderr


def test_the_tests_that_read_upstream_follow_the_runs_rule(monkeypatch, tmp_path):
    """The unit tests that read upstream's tree (device names, build configurations) take
    their source by the upstream run's rule (conformance.ci.upstream_source): the variable
    when set, a missing path included (they then fail, as the run does); else this
    project's ../shared/infinicore; else none, and they are recorded unsupported, under CI
    too. They once failed a fresh clone's `CI=true tox -e cpu` with 34 errors."""
    from conformance import ci

    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("INFINILM_UPSTREAM_SOURCE", str(tmp_path / "missing"))
    assert ci.upstream_source() == tmp_path / "missing"
    monkeypatch.delenv("INFINILM_UPSTREAM_SOURCE")
    monkeypatch.setattr(ci, "PROJECT_UPSTREAM", tmp_path / "shared" / "infinicore")
    assert ci.upstream_source() is None and ci.NOT_CONFIGURED.startswith("unsupported: ")
    (tmp_path / "shared" / "infinicore").mkdir(parents=True)
    assert ci.upstream_source() == tmp_path / "shared" / "infinicore"
    for test in ("tests/test_build_backends.py", "tests/test_device_names.py"):
        text = (ROOT / test).read_text()
        assert "upstream_source()" in text and "NOT_CONFIGURED" in text, test


def test_ci_run_configures_the_upstream_source_and_runs_the_readme_command():
    text = (ROOT / ".ci" / "run").read_text()
    assert 'INFINILM_UPSTREAM_SOURCE="${INFINILM_UPSTREAM_SOURCE-$PWD/../shared/infinicore}"' \
        in text
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^\.venv/bin/tox (-e \S+)$", text, re.M)
    assert command, "the tox command of .ci/run"
    assert f".venv/bin/tox {command.group(1)}\n" in readme.split("```")[1], \
        "README command 2 and .ci/run differ"


def _inner(reports: Path, job: str, *args: str) -> subprocess.CompletedProcess:
    tests = reports.parent / "tiny"
    tests.mkdir(exist_ok=True)
    (tests / "test_tiny.py").write_text(TINY)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
         "-p", "no:xdist", "-q", "--infini-device", "cpu", f"--report-dir={reports}",
         str(tests), *args], cwd=tests, env=_env(INFINILM_JOB=job), capture_output=True,
        text=True, timeout=600)


def test_a_job_is_one_artifact(tmp_path):
    reports = tmp_path / "reports"
    start = subprocess.run([sys.executable, "-m", "conformance.ci", "job-start", "ci-demo",
                            "--report-dir", str(reports)], cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=60)
    assert start.returncode == 0, start.stderr
    first = _inner(reports, "ci-demo", "--dtype", "f32")
    second = _inner(reports, "ci-demo", "--dtype", "bf16")
    assert first.returncode == 0 and second.returncode == 0, first.stdout[-2000:]
    runs = json.loads((reports / "ci-demo" / "job.json").read_text())["runs"]
    assert len(runs) == 2
    # latest is the primary (first) run, not the one that ran last
    assert (reports / "latest").resolve().name == runs[0]
    for n, run_id in enumerate(runs):
        doc = json.loads((reports / run_id / "results.json").read_text())
        key = doc["environment"]["infinicore"]["key"]  # e.g. pypi:0.1.0
        kind, _, value = key.partition(":")
        if re.fullmatch(r"[0-9a-f]{16,}", value):
            value = value[:12]
        assert re.fullmatch(rf"\d{{8}}-\d{{6}}-cpu-{re.escape(kind)}-{re.escape(value)}(-\d+)?",
                            run_id), run_id
        assert doc["run_id"] == run_id
        assert doc["environment"]["job"] == {"name": "ci-demo", "index": n, "primary": n == 0,
                                             "scoreboard": "../ci-demo/index.html"}
        page = (reports / run_id / "index.html").read_text()
        assert 'id="job-scoreboard" href="../ci-demo/index.html"' in page
    board = json.loads((reports / "ci-demo" / "scoreboard.json").read_text())
    assert [r["run_id"] for r in board["runs"]] == runs
    for r in board["runs"]:
        assert (reports / "ci-demo" / r["href"]).resolve().is_file()
    assert "job:     " in second.stdout and "scoreboard of job ci-demo" in second.stdout


def test_a_run_outside_a_started_job_is_not_part_of_it(tmp_path):
    """tox sets INFINILM_JOB for the whole env: a self-test's inner run (its own report
    directory, no job started there) must stay a plain run."""
    reports = tmp_path / "reports"
    proc = _inner(reports, "cpu", "--dtype", "f32")
    assert proc.returncode == 0, proc.stdout[-2000:]
    latest = json.loads((reports / "latest" / "results.json").read_text())
    assert "job" not in latest["environment"]
    assert not (reports / "cpu").exists()


def test_a_bad_job_name_is_one_line(tmp_path):
    """(The plugin turns this error into a usage error before any run directory exists.)"""
    from conformance.jobs import job_name, start

    for bad in ("../escape", "latest", "benchmarks", "2026-run", "a b"):
        with pytest.raises(ValueError, match=r"INFINILM_JOB=.*: a job name is a letter"):
            job_name(bad)
    assert job_name("bench-compare") == "bench-compare" and job_name("") is None
    proc = subprocess.run([sys.executable, "-m", "conformance.ci", "job-start", "../x",
                           "--report-dir", str(tmp_path)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "error: job-start: INFINILM_JOB='../x'" in proc.stderr
    assert not start(tmp_path / "reports", "ok").joinpath("index.html").exists()


DEVICE_KINDS = ("cpu", "nvidia", "cambricon", "ascend", "metax", "moore", "iluvatar",
                "kunlun", "hygon", "qy", "ali")  # InfiniCore's device types (infinicore.h)


def test_a_tox_env_per_device_kind():
    """`tox -e <device>` for every InfiniCore device kind: the env's name picks
    --infini-device and the build backend; `tox -e conformance` follows INFINILM_DEVICE."""
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "tox.ini")
    envs = {}
    for section in ini.sections():
        m = re.fullmatch(r"testenv:\{([^}]+)\}", section)
        names = m.group(1).split(",") if m else [section.removeprefix("testenv:")]
        for name in names:
            envs[name.strip()] = section
    assert set(DEVICE_KINDS) <= set(envs)
    for kind in DEVICE_KINDS:
        if kind == "cpu":
            continue
        section = ini[envs[kind]]
        pre, commands = section["commands_pre"], section["commands"]
        if envs[kind] == f"testenv:{kind}":  # its own section (nvidia): its own name
            assert f"--backend {kind}" in pre and f"--infini-device {kind}" in commands
        else:  # the generative section: {env_name} is the device
            assert "--backend {env_name}" in pre and "--infini-device {env_name}" in commands
            assert "INFINILM_BACKEND = {env_name}" in section["set_env"]
    conformance = ini["testenv:conformance"]
    assert "--infini-device {env:INFINILM_DEVICE:cpu}" in conformance["commands"]
    assert "python -m conformance.ci build" in conformance["commands_pre"]
