"""A checkpoint's tokenizer.json through `tokenizers` (no torch), for the CLI and the suite.

`tokenizers` raises a bare Exception ("expected value at line 1 column 1") for a file it
cannot parse, naming no file; here every problem names the path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import files

__all__ = ["TOKENIZER_FILE", "TokenizerError", "load_tokenizer"]

TOKENIZER_FILE = "tokenizer.json"


class TokenizerError(ValueError):
    """A tokenizer.json that cannot be used; the message names the file."""


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The `tokenizers.Tokenizer` of a checkpoint directory (its tokenizer.json) or of a
    tokenizer.json itself. Raises TokenizerError "<file>: <why>" for a missing file, a
    path that is not a regular file (`files.check_file`) or content that does not parse."""
    from tokenizers import Tokenizer

    p = Path(path)
    file = p / TOKENIZER_FILE if p.is_dir() else p
    text = files.read_text(file, TokenizerError)
    try:
        return Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises plain Exception for a corrupt file
        raise TokenizerError(f"{file}: not a valid tokenizer.json ({exc})") from None
