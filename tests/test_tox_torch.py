"""tox's GPU envs use the runner's own CUDA torch wherever it is installed (a virtualenv
included), through tools/tox_torch.py, and say which torch and CUDA they run with."""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# tools/ is not a package of the project: importable from the checkout's root, whatever
# the editable install's mode puts on sys.path.
sys.path.insert(0, str(ROOT))
from tools import tox_torch  # noqa: E402


def _fake_torch(tmp_path: Path, body: str) -> Path:
    site = tmp_path / "runner-site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text(body)
    return site


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> None:
    # The "runner" is this interpreter; PYTHONPATH puts the fake torch before the real one.
    monkeypatch.setenv(tox_torch.ENV_VAR, sys.executable)


def test_links_a_cuda_torch_into_the_env(tmp_path: Path, runner: None,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    site = _fake_torch(tmp_path, '__version__ = "2.11.0+cu130"\n'
                                 'class version:\n    cuda = "13.0"\n')
    monkeypatch.setenv("PYTHONPATH", str(site))
    env_site = tmp_path / "env-site"
    assert tox_torch.main(["link", str(env_site)]) == 0
    assert '"cuda": "13.0"' in capsys.readouterr().out
    pth = (env_site / tox_torch.PTH_NAME).read_text()
    assert pth == f"import site; site.addsitedir({str(site)!r})\n"


@pytest.mark.parametrize(("body", "expected"), [
    ('__version__ = "2.13.0+cpu"\nclass version:\n    cuda = None\n',
     r"torch 2\.13\.0\+cpu from .* built without CUDA"),
    ('raise ImportError("no torch here")\n', "cannot import torch: ImportError: no torch here"),
])
def test_refuses_a_torch_without_cuda(tmp_path: Path, runner: None, body: str, expected: str,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PYTHONPATH", str(_fake_torch(tmp_path, body)))
    env_site = tmp_path / "env-site"
    assert tox_torch.main(["link", str(env_site)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and sys.executable in err
    assert tox_torch.ENV_VAR in err
    assert re.search(expected, err), err
    assert not (env_site / tox_torch.PTH_NAME).exists()


def test_tox_gpu_envs_use_it() -> None:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "tox.ini")
    nvidia = ini["testenv:nvidia"]
    # system_site_packages cannot see a virtualenv's packages: that was the bug.
    assert "system_site_packages" not in nvidia
    assert nvidia["basepython"] == "{env:INFINILM_TORCH_PYTHON:python3}"
    assert "tools/tox_torch.py install {packages}" in nvidia["install_command"]
    pre = [line.strip() for line in nvidia["commands_pre"].splitlines() if line.strip()]
    # The torch report comes before anything is installed or built with it.
    report = pre.index("python {toxinidir}/tools/tox_torch.py report")
    assert report < min(i for i, line in enumerate(pre) if "pip install" in line
                        or "runtime.build" in line)
    bench = ini["testenv:bench-nvidia"]
    assert "system_site_packages" not in bench
    assert bench["install_command"] == "{[testenv:nvidia]install_command}"
    assert bench["basepython"] == "{[testenv:nvidia]basepython}"
    assert bench["commands_pre"] == "{[testenv:nvidia]commands_pre}"
