"""Op checks: the sampled sweeps are parametrized here, from --sweep-seed/--sweep-cases."""

from __future__ import annotations

import pytest

from .sweep import cases_for


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "sweep_case" in metafunc.fixturenames:
        config = metafunc.config
        cases = cases_for(metafunc.function.__name__, config.getoption("--sweep-seed"),
                          config.getoption("--sweep-cases"))
        metafunc.parametrize("sweep_case", cases, ids=str)
