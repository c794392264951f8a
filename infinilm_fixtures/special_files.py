"""Paths that are not regular files, for the tests of what the loader, the CLI and the suite
do with them: a directory, a named pipe, a device, a socket, a dangling link, link loops.

`make(path, kind)` replaces `path` (a file of a checkpoint copy, or a name not there yet)
with one of `KINDS`, and returns the words the refusal must contain (files.py says them).
Devices are reached through a symlink (creating device nodes needs privileges), which also
exercises link resolution.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

__all__ = ["KINDS", "make"]

# kind -> words of the one-line refusal (infinilm_models/files.py)
KINDS: dict[str, str] = {
    "directory": "is a directory",
    "fifo": "is a named pipe (FIFO)",
    "dev-null": "is a character device",
    "dev-zero": "is a character device",
    "socket": "is a socket",
    "dangling-link": "is a dangling symlink",
    "self-loop": "is a symlink loop",
    "two-link-loop": "is a symlink loop",
    "long-chain": "is a symlink loop",  # more links than open() would follow
}


def make(path: Path, kind: str) -> str:
    """Put a `kind` at `path` (removing what was there); the refusal's words."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        raise ValueError(f"{path} is a directory already")
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind in ("dev-null", "dev-zero"):
        path.symlink_to("/dev/" + kind.removeprefix("dev-"))
    elif kind == "socket":
        # AF_UNIX names are limited to ~107 bytes: bind in a short directory, then move.
        short = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(short / "s"))
        os.replace(short / "s", path)
        short.rmdir()
    elif kind == "dangling-link":
        path.symlink_to(path.name + ".missing")
    elif kind == "self-loop":
        path.symlink_to(path.name)
    elif kind == "two-link-loop":
        other = path.with_name(path.name + ".other")
        other.symlink_to(path.name)
        path.symlink_to(other.name)
    elif kind == "long-chain":
        # 41 links, each to the next, ending at a real file: a chain open() refuses too.
        target = path.with_name(path.name + ".end")
        target.write_text("{}")
        previous = target.name
        for i in range(41):
            link = path.with_name(f"{path.name}.{i}")
            link.symlink_to(previous)
            previous = link.name
        path.symlink_to(previous)
    else:
        raise ValueError(f"unknown kind {kind!r}; known: {sorted(KINDS)}")
    return KINDS[kind]
