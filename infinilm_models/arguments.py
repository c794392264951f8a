"""Validation of the public arguments (token ids, lengths, flags, sampling numbers).

Each check refuses a bad value where it enters, with the argument's name and the value in
the message: TypeError for a value of the wrong kind (a float or a bool where a token id
or a length belongs), ValueError for a value of the right kind out of range. numpy's own
conversions are not trusted with this: ``np.asarray([[1.9, 2.9]], dtype=np.int64)``
silently truncates to ``[[1, 2]]``, ``"5"`` becomes 5 and ``True`` becomes 1.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

__all__ = ["OneLineParser", "check_bool", "check_float", "check_int", "float_in", "int_at_least",
           "nonempty", "token_ids"]

_INT64_MAX = int(np.iinfo(np.int64).max)


def _is_int(value: Any) -> bool:
    # bool is an int to Python and numpy's bool_ is not; neither is a count or a token id.
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """An integer (not a bool, not a float with an integral value), >= ``minimum``."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_float(value: Any, name: str) -> float:
    """A finite real number (ints accepted, bools and NaN/Inf not)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                      np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    try:
        out = float(value)
    except OverflowError:
        raise ValueError(f"{name} ({value!r}) is too large") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return out


def ragged_token_ids(value: Any, name: str = "input_ids", *, vocab_size: int | None = None
                     ) -> list[np.ndarray]:
    """Prompts of possibly unequal lengths: a list of rows of token ids (or a 2-D integer
    array), each checked as `token_ids` checks them; one int64 array per row."""
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(r, (list, tuple, np.ndarray)) for r in value):
        rows = _rows(value, name)
        if len({len(r) for r in rows}) == 1:  # equal lengths: exactly forward()'s checks
            return list(token_ids(value, name, vocab_size=vocab_size))
        for b, row in enumerate(rows):
            if not row:
                raise ValueError(f"{name}[{b}] is empty: every prompt needs a token")
        return [token_ids([row], name, vocab_size=vocab_size, row_offset=b)[0]
                for b, row in enumerate(rows)]
    return list(token_ids(value, name, vocab_size=vocab_size))


def token_ids(value: Any, name: str = "input_ids", *, vocab_size: int | None = None,
              row_offset: int = 0) -> np.ndarray:
    """``value`` as an int64 array [batch, seq] with batch, seq >= 1 and, given
    ``vocab_size``, every id in [0, vocab_size).

    Accepts a list/tuple of equal-length lists/tuples (or 1-D integer arrays) of ints, or
    any 2-D integer array (numpy, or anything with ``__array__`` such as a torch tensor).
    """
    if isinstance(value, (list, tuple)):
        arr = _from_rows(value, name)
    elif isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer token ids, got an array of {arr.dtype}")
        if arr.ndim != 2:
            raise ValueError(f"{name} must be [batch, seq], got an array of shape {arr.shape}")
        if arr.dtype.kind == "u" and arr.size and int(arr.max()) > _INT64_MAX:
            raise ValueError(f"{name} holds token id {int(arr.max())}, beyond int64")
        arr = arr.astype(np.int64, copy=False)
    else:
        raise TypeError(f"{name} must be [batch, seq] token ids (a list of lists of ints or "
                        f"an integer array), got {type(value).__name__}")
    batch, seq = arr.shape
    if batch == 0 or seq == 0:
        raise ValueError(f"{name} must be [batch, seq] with batch >= 1 and seq >= 1, got "
                         f"shape {arr.shape}")
    if vocab_size is not None:
        bad = (arr < 0) | (arr >= vocab_size)
        if bad.any():
            b, t = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"token id {int(arr[b, t])} out of range [0, {vocab_size}) at "
                             f"{name}[{b + row_offset}][{t}]")
    return arr


def _from_rows(value: list | tuple, name: str) -> np.ndarray:
    rows = _rows(value, name)
    lengths = [len(r) for r in rows]
    if len(set(lengths)) > 1:
        raise ValueError(f"all prompts must have the same length here: {name} rows have "
                         f"lengths {lengths} (generate() left-pads prompts of unequal "
                         "length; forward() takes padded ids with an attention_mask)")
    return np.array(rows, dtype=np.int64).reshape(len(rows), lengths[0] if rows else 0)


def _rows(value: list | tuple, name: str) -> list[list[int]]:
    """Rows of Python ints, each element checked (kind and int64 range)."""
    rows: list[list[int]] = []
    for b, row in enumerate(value):
        if isinstance(row, np.ndarray):
            if row.ndim != 1:
                raise ValueError(f"{name} must be [batch, seq]; {name}[{b}] has shape "
                                 f"{row.shape}")
            if row.dtype.kind not in "iu":
                raise TypeError(f"{name}[{b}] must hold integer token ids, got {row.dtype}")
            row = row.tolist()
        elif not isinstance(row, (list, tuple)):
            raise ValueError(f"{name} must be [batch, seq] (a list of lists of token ids); "
                             f"{name}[{b}] is {row!r}")
        for t, x in enumerate(row):
            if not _is_int(x):
                raise TypeError(f"{name}[{b}][{t}] ({x!r}, {type(x).__name__}) is not an "
                                "integer token id")
            if not -_INT64_MAX <= x <= _INT64_MAX:
                raise ValueError(f"token id {x} at {name}[{b}][{t}] is beyond int64")
        rows.append([int(x) for x in row])
    return rows


# -- command-line options --------------------------------------------------------------------
# argparse types: a bad value is refused where it enters, and argparse names the option
# ("argument --tp: 0 is not an integer >= 1"); OneLineParser prints that as one line.


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, `prog: error: message` with the option
    and the value named, exit status 2 (the usage stays in --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def nonempty(value: str) -> str:
    """A string option that must say something (a path, a device, a prompt)."""
    if not value.strip():
        raise argparse.ArgumentTypeError(f"{value!r}: an empty value")
    return value


def output_file(value: str) -> Path:
    """A file option to write: not empty, not an existing directory."""
    path = Path(nonempty(value))
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a directory, not a file")
    return path


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < minimum:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer >= {minimum}")
        return number
    parse.__name__ = f"integer >= {minimum}"
    return parse


def float_in(low: float, high: float = math.inf, *, low_open: bool = False
             ) -> Callable[[str], float]:
    """A finite float in [low, high] ((low, high] with low_open)."""
    span = f"{'(' if low_open else '['}{low:g}, {high:g}]" if high < math.inf else \
        f"{'>' if low_open else '>='} {low:g}"
    what = f"a finite number in {span}" if high < math.inf else f"a finite number {span}"

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number < low or number > high or \
                (low_open and number == low):
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}")
        return number
    parse.__name__ = what
    return parse
