"""Errors that name the offending file or field, so a user can fix their input without reading a traceback."""

from __future__ import annotations

from pathlib import Path


class FracflError(Exception):
    """Base class for errors meant to be shown to a user as one clear line."""


class DataError(FracflError, ValueError):
    """A dataset file is unusable: `path` is the file, `problem` says what is wrong with it."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        self.path = Path(path)
        self.problem = problem
        self.line = line
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {problem}")


class ConfigError(FracflError, ValueError):
    """A configuration value is invalid: the message names the key and the accepted values."""
