"""Cases a run leaves out on purpose stay planned and say why.

A case the harness does not run on this device (SmolLM2's longest cases on a 2-core CPU,
left to GPU runs) is collected, written to the plan and recorded with status
`unsupported` and its reason, in results.json and the report, like a refusal of the
backend; only its body does not run. Deselecting it instead would leave it out of the
plan, the record and the report: a narrowing nobody could see.
"""

from __future__ import annotations

import pytest

from .verify import UNSUPPORTED_PREFIX

LEFT_OUT = pytest.StashKey[str]()


def leave_out(item: pytest.Item, reason: str) -> None:
    """Record `item` as unsupported with `reason` instead of running it."""
    item.stash[LEFT_OUT] = reason


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = item.stash.get(LEFT_OUT, None)
    if reason is not None:
        pytest.skip(UNSUPPORTED_PREFIX + reason)
