"""Run an InfiniCore call in a child process, so that a crash is a failed check.

A kernel that segfaults (as InfiniCore 0.1.0's fused attention does on NVIDIA) would
otherwise take the whole pytest run with it. The child is started with `spawn` (no
inherited CUDA or OpenMP state), runs `func(*args)`, and sends back its return value
(numpy arrays); a child killed by a signal becomes `CrashedCheck` naming the signal.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import traceback


class CrashedCheck(AssertionError):
    """The code under test killed its process (signal) or hung (timeout)."""

    def __init__(self, message: str, *, signal: str | None = None,
                 exit_code: int | None = None, timeout: bool = False) -> None:
        super().__init__(message)
        self.signal, self.exit_code, self.timeout = signal, exit_code, timeout


def _child(conn, func, args, backend=None) -> None:
    try:
        if backend:  # the parent's choice of InfiniCore build (spawn starts afresh)
            from infinilm_models.runtime.library import set_default_backend

            set_default_backend(backend)
        conn.send(("ok", func(*args)))
    except BaseException as e:  # noqa: BLE001 - everything must reach the parent
        conn.send(("error", (type(e).__name__, str(e), traceback.format_exc())))
    finally:
        conn.close()


class ChildError(RuntimeError):
    def __init__(self, type_name: str, message: str, tb: str) -> None:
        super().__init__(f"{type_name} in isolated child: {message}")
        self.type_name = type_name
        self.message = message
        self.child_traceback = tb


def run_isolated(func, *args, timeout: float = 600.0):
    """`func(*args)` in a fresh process; `func` must be importable at module level.
    Under the support probe (describe-only op calls, which compute nothing) it runs here,
    so that the probe sees its calls; the check's own process is still supervised."""
    from infinilm_models.runtime.library import default_backend
    from infinilm_models.runtime.ops._base import CachedOp

    if CachedOp.observer is not None:
        return func(*args)

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, func, args, default_backend()),
                       daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            proc.kill()
            proc.join()
            if proc.exitcode is not None and proc.exitcode < 0 and \
                    proc.exitcode != -signal.SIGKILL:
                raise _crashed(proc.exitcode)
            raise CrashedCheck(f"no result within {timeout:.0f} s (killed)",
                               exit_code=proc.exitcode, timeout=True)
        kind, payload = parent.recv()
    except EOFError:
        proc.join()
        raise _crashed(proc.exitcode) from None
    finally:
        parent.close()
    proc.join()
    if kind == "error":
        raise ChildError(*payload)
    return payload


def _crashed(exitcode: int | None) -> CrashedCheck:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return CrashedCheck(f"process crashed: killed by {name} (exit code {exitcode})",
                            signal=name, exit_code=exitcode)
    return CrashedCheck(f"process died without a result (exit code {exitcode})",
                        exit_code=exitcode)
