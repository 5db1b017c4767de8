"""One dataset problem as a value, so checks can collect every issue instead of stopping at the first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.errors import DataError

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """A problem in one file (and line, for label rows). Errors make a dataset unusable; warnings do not."""

    path: Path
    severity: Severity
    message: str
    line: int | None = None

    @classmethod
    def error(cls, path: str | Path, message: str, line: int | None = None) -> Problem:
        return cls(Path(path), "error", message, line)

    @classmethod
    def warning(cls, path: str | Path, message: str, line: int | None = None) -> Problem:
        return cls(Path(path), "warning", message, line)

    @classmethod
    def from_error(cls, err: DataError) -> Problem:
        """The error-severity problem equivalent to a raised DataError."""
        return cls(err.path, "error", err.problem, err.line)

    def where(self, relative_to: Path | None = None) -> str:
        """`path[:line]`, relative to `relative_to` when the file is inside it (shorter report lines)."""
        path = self.path
        if relative_to is not None:
            try:
                path = path.relative_to(relative_to)
            except ValueError:
                pass
        return f"{path}:{self.line}" if self.line is not None else str(path)

    def __str__(self) -> str:
        return f"{self.where()}: {self.message}"
