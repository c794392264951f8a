"""Every check starts clean: no state an earlier check left behind reaches it.

Models are loaded once per process and reused by every check of the same checkpoint,
dtype and device (loading SmolLM2 per check would cost minutes). What they reuse between
calls (activation buffers, the scratch caches of uncached calls, the ops' workspaces) is
zeroed when a check starts, so

  * a value a backend wrote wrongly during one check (one NaN from a corrupted call)
    cannot re-enter a later check through a reused buffer (0.1.0's CPU f32 gemm reads its
    output even with beta = 0: a stale NaN there becomes a NaN result);
  * an op that leaves part of its output unwritten finds zeros there, not the right values
    an earlier check of the same shape and prompt left behind, so every check of that
    shape sees it.

Whoever keeps a model for later checks registers how to reset it (`on_check_start`); the
`verify` fixture calls `start_check()` before each check, in whatever process runs it
(serial, an xdist worker, the supervised child).
"""

from __future__ import annotations

from collections.abc import Callable

_resetters: list[Callable[[], None]] = []


def on_check_start(fn: Callable[[], None]) -> Callable[[], None]:
    """Register `fn` to run before every check (a decorator)."""
    _resetters.append(fn)
    return fn


def start_check() -> None:
    for fn in list(_resetters):
        fn()
    from infinilm_models.runtime.ops._base import Workspace

    Workspace.zero_all()
