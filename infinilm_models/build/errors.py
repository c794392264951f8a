"""The build tool's one error type and its progress lines."""

from __future__ import annotations


class BuildError(RuntimeError):
    """A build step failed or a request is wrong; the message says which and how to fix it."""


def log(msg: str) -> None:
    print(f"[infinicore-build] {msg}", flush=True)
