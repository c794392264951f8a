"""A planted slowdown for the performance gate's self-tests: `pytest -p
conformance.selftest.perf_plants --slowdown OP=FRACTION` makes every call of one
InfiniCore op do its real work and then `FRACTION` more of the same time, as a slower
kernel would (the output is the real one: the accuracy gate still passes).

The extra time is spent busy (not sleeping) on the clock the benchmarks measure
(`--benchmark-timer`): wall time by default; the self-tests use `time.process_time`, the
CPU time of this process, which a shared 2-core machine's descheduling does not reach.
"""

from __future__ import annotations

import time

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slowdown", default=None, metavar="OP=FRACTION",
                     help="make InfiniCore op OP take (1 + FRACTION) times its time "
                          "(self-tests of the performance gate)")


def pytest_configure(config: pytest.Config) -> None:
    value = config.getoption("--slowdown")
    if not value:
        return
    op, sep, fraction = value.partition("=")
    try:
        slow = float(fraction)
    except ValueError:
        slow = -1.0
    if not sep or slow <= 0:
        raise pytest.UsageError(f"--slowdown {value!r}: expected OP=FRACTION, e.g. gemm=0.3")
    timer = getattr(config.getoption("benchmark_timer", None), "target", None)
    install(op, slow, timer if callable(timer) else time.perf_counter)


def install(op: str, fraction: float, clock=time.perf_counter) -> None:
    """Wrap `ops.<op>`: its real call, then busy until `clock` (the benchmark's timer) has
    advanced `fraction` of the call's own time more."""
    from infinilm_models.runtime import ops

    real = getattr(ops, op)

    def planted(*args, **kwargs):
        start = clock()
        out = real(*args, **kwargs)
        until = start + (clock() - start) * (1 + fraction)
        while clock() < until:
            pass
        return out

    setattr(ops, op, planted)
