"""What the listener does with one received object: a `Processor` turns it into result files to send back.

The queue and network code only see this protocol, so the inference pipeline plugs in as one object and tests of
the network layer do not depend on the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol


class Quarantine(Exception):
    """The object can never be processed (not a radiograph, unreadable pixels...): no retry, straight to failed/.

    `reason` is a short code that goes to the log and journal (no patient data), with `transfer_syntax`; `detail` is
    the sentence for the operator, kept only in the item's reason.txt because it may quote the file.
    """

    def __init__(self, reason: str, detail: str = "", transfer_syntax: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.transfer_syntax = transfer_syntax  # logged beside the reason: which codec a site may be missing


class Processor(Protocol):
    def __call__(self, path: Path) -> Sequence[Path]:
        """Result files (DICOM) for the object at `path`; the caller moves them. Raise `Quarantine` for bad input;
        any other exception counts as a transient failure and is retried."""
        ...
