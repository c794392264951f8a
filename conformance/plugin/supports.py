"""An op check whose C op the build does not export is `unsupported` at collection
(llama.cpp's `supports_op`): decided from the build's record (capabilities.Build, its
ELF exports read without loading InfiniCore), not discovered when the check calls it.

The check stays a planned check: it is collected, written to the plan, and recorded with
status `unsupported` and the reason (the missing C functions, "not exported by this
build") in results.json, as a refusal at call time would be; only its body does not run.
With --fail-on-unsupported it fails instead, as every unsupported result does. A build
whose exports could not be read (`exports_known` false) is left to the call-time answer.
"""

from __future__ import annotations

import pytest

from .recording import base_record
from .verify import UNSUPPORTED_PREFIX

REASON = pytest.StashKey[str]()


def not_exported(item: pytest.Item, build) -> str | None:
    """What the op of this op check needs and `build` does not export (the op, or its
    missing C functions); None for a check that is not an op check, whose op has no spec
    row (allreduce), or that the build can run."""
    from infinilm_models.runtime.ops.specs import BY_PY

    record = base_record(item)
    spec = BY_PY.get(record.op or "") if record.check.startswith("op_") else None
    if spec is None:
        return None
    missing = [f for f in spec.functions if not build.has(f)]
    if not missing:
        return None
    return spec.compute_fn if len(missing) == len(spec.functions) else ", ".join(missing)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from infinilm_models.runtime.capabilities import current_build
    from infinilm_models.runtime.library import LibraryNotFound

    try:
        build = current_build()
    except (LibraryNotFound, OSError):
        return  # no build: every check says so when it runs
    if not build.exports_known:
        return
    for item in items:
        missing = not_exported(item, build)
        if missing:
            item.stash[REASON] = (f"{missing}: not exported by this build "
                                  f"({build.identity.label}; decided at collection)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture: the check is unsupported (pytest.skip with the prefix the
    recorder reads as `unsupported`)."""
    reason = item.stash.get(REASON, None)
    if reason is not None and not item.config.getoption("--fail-on-unsupported"):
        pytest.skip(UNSUPPORTED_PREFIX + reason)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """--fail-on-unsupported: a failed check (in the call phase, as verify.unsupported
    fails one), not a setup error."""
    reason = item.stash.get(REASON, None)
    if reason is not None:
        pytest.fail(UNSUPPORTED_PREFIX + reason, pytrace=False)
