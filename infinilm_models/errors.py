"""Errors every model family raises, here so that a family, generation and the CLI can
import them without importing another family."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config.json (or generation_config.json) this implementation cannot (or must not)
    run; the message names the file and the field."""
