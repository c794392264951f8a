"""The one check of every file a run reads: config.json, generation_config.json, the weights
and their index, tokenizer.json, and the suite's inputs.

A checkpoint directory is downloaded or hand-made data, and any name in it can be something
other than a file: a directory, a named pipe (reading it waits forever for a writer), a
device (``/dev/zero`` reads without end, until a MemoryError), a socket, or a symlink that
dangles or loops. Each is refused with one line naming the path and what it is, before
anything opens it; no read ever waits on a pipe.

Links are followed one hop at a time, at most `MAX_LINK_HOPS` (the kernel's own limit), so
a loop is named as one instead of hanging or raising from deep inside pathlib. `read_bytes`
and `read_text` also check, after opening without blocking, that what they opened is still
a regular file (a name swapped for a pipe between the check and the open is refused too).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["MAX_LINK_HOPS", "FileError", "check_file", "present", "problem", "read_bytes",
           "read_text"]

MAX_LINK_HOPS = 40  # Linux's MAXSYMLINKS: what open() itself would follow

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class FileError(ValueError):
    """A path that cannot be read as a regular file; the message names it and why."""


def present(path: str | os.PathLike[str]) -> bool:
    """Whether anything is at `path`, a dangling or looping symlink included (such a name is
    there, and refused by `check_file`, rather than treated as absent)."""
    return os.path.lexists(path)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def problem(path: str | os.PathLike[str]) -> str | None:
    """Why `path` cannot be read as a regular file ("does not exist", "is a named pipe
    (FIFO), not a regular file", ...), or None when it can."""
    p = Path(path)
    hops = 0
    while True:
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            if hops:
                return f"is a dangling symlink (its target {p} does not exist)"
            return "does not exist"
        except NotADirectoryError:
            return "does not exist (a component of the path is not a directory)"
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a loop in a directory component of the path
                return "is a symlink loop (a directory of its path loops)"
            return f"cannot be examined ({exc.strerror or exc})"
        if not stat.S_ISLNK(st.st_mode):
            break
        if hops == MAX_LINK_HOPS:
            return f"is a symlink loop (or a chain of more than {MAX_LINK_HOPS} links)"
        try:
            target = os.readlink(p)
        except OSError as exc:
            return f"is a symlink that cannot be read ({exc.strerror or exc})"
        p = p.parent / target
        hops += 1
    via = f" (a symlink to {p})" if hops else ""
    if not stat.S_ISREG(st.st_mode):
        return f"is {_kind(st.st_mode)}{via}, not a regular file"
    if not os.access(p, os.R_OK):
        return f"is not readable (permission denied){via}"
    return None


def check_file(path: str | os.PathLike[str], error: type[Exception] = FileError) -> Path:
    """`path` if it is a readable regular file (after its links); else raise `error`
    with "<path>: <why>"."""
    why = problem(path)
    if why is not None:
        raise error(f"{path}: {why}")
    return Path(path)


def read_bytes(path: str | os.PathLike[str], error: type[Exception] = FileError) -> bytes:
    """The whole file, checked first (`check_file`); `error` for anything that goes wrong."""
    check_file(path, error)
    try:
        # O_NONBLOCK: should the name have become a pipe since the check, the open returns
        # at once instead of waiting for a writer, and fstat below refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"{path}: cannot open ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{path}: is {_kind(mode)}, not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike[str], error: type[Exception] = FileError) -> str:
    """`read_bytes` decoded as UTF-8 (a file that is not UTF-8 raises `error` too)."""
    data = read_bytes(path, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: cannot read as UTF-8 text ({exc})") from None
