"""Keep DICOM values out of every log line and warning, ours and the libraries'.

pydicom, highdicom and pynetdicom quote header values in their warnings and log records (highdicom's person-name
check prints the patient's or the referring physician's name; pydicom's value validation prints the value). A site
log must never hold patient data, so `install()` (called once by every command that reads DICOM) does two things
for the whole process:

- every warning becomes a log record (logger `fracfl.warnings`), so it passes the step below;
- every log record is rewritten before any handler sees it: each value of the file being handled in this thread
  (`handling()`, `note()`) becomes the name of its attribute (`<PatientName>`), and a record that comes from a DICOM
  library while no file is being handled loses its text altogether. Library tracebacks are dropped: the reason code
  and the transfer syntax say what failed (docs/dicom.md), the traceback would only repeat decoder internals.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID_dictionary

# Loggers and modules that quote header values. (pynetdicom's own logging of datasets is switched off by the
# listener; its remaining warnings are about the network and stay readable.)
LIBRARIES = ("pydicom", "highdicom")
WARNINGS_LOGGER = "fracfl.warnings"
WITHHELD = "message withheld (DICOM library text may quote header values)"
# Value representations whose values can identify a patient, a person or a study. Numbers, code strings and the
# standard's own UIDs (SOP classes, transfer syntaxes) are kept: they identify nobody and make messages useful.
_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "DA", "DT", "TM", "AS", "UI", "AE", "UR"})
_MIN_LEN = 3  # shorter fragments ("M", "F", "Y") would blank ordinary words


class _Scope:
    """Values of the files handled by one call: value (lower case) -> attribute keyword, and one pattern."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.pattern: re.Pattern[str] | None = None

    def add(self, values: dict[str, str]) -> None:
        new = {k.lower(): v for k, v in values.items() if k.lower() not in self.names}
        if new:
            self.names.update(new)
            ordered = sorted(self.names, key=len, reverse=True)  # longest first: a full name before its parts
            self.pattern = re.compile("|".join(re.escape(v) for v in ordered), re.IGNORECASE)

    def redact(self, text: str) -> str:
        if self.pattern is None:
            return text
        return self.pattern.sub(lambda m: f"<{self.names.get(m.group(0).lower(), 'value')}>", text)


_scope: ContextVar[_Scope | None] = ContextVar("fracfl_dicom_scope", default=None)


@contextmanager
def handling() -> Iterator[None]:
    """Everything logged or warned inside is redacted with the values of the datasets `note`d meanwhile. Installs the
    hooks again (cheap): code that ran `warnings.catch_warnings()` meanwhile may have put the old one back."""
    install()
    token = _scope.set(_Scope())
    try:
        yield
    finally:
        _scope.reset(token)


def note(ds: Dataset) -> None:
    """Register `ds`'s identifying values with the current `handling()` scope (no-op outside one)."""
    scope = _scope.get()
    if scope is not None:
        scope.add(identifying_values(ds))


def redact(text: str) -> str:
    """`text` with every registered value of the current scope replaced by its attribute name."""
    scope = _scope.get()
    return scope.redact(text) if scope is not None else text


def identifying_values(ds: Dataset) -> dict[str, str]:
    """value -> attribute keyword for every text value in `ds` (nested sequences and file meta included), and for
    person names also their components and the 'given family' spellings a message might use."""
    found: dict[str, str] = {}
    with pydicom_config.disable_value_validation():  # validation would warn, quoting the values being collected
        elements = list(ds.iterall())
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            elements += list(meta.iterall())
        for elem in elements:
            if elem.VR not in _TEXT_VRS or elem.value is None:
                continue
            values = elem.value if isinstance(elem.value, (MultiValue, list, tuple)) else [elem.value]
            keyword = elem.keyword or str(elem.tag)
            for value in values:
                for text in _spellings(str(value), elem.VR):
                    if len(text) >= _MIN_LEN and not (elem.VR == "UI" and text in UID_dictionary):
                        found.setdefault(text, keyword)
    return found


def _spellings(value: str, vr: str) -> list[str]:
    value = value.strip()
    if vr != "PN":
        return [value]
    out = [value]
    for group in value.split("="):  # alphabetic, ideographic, phonetic
        parts = [p.strip() for p in group.split("^") if p.strip()]
        out += parts
        if len(parts) >= 2:
            out += [" ".join(parts), f"{parts[1]} {parts[0]}", ", ".join(parts[:2])]
        # single words too: a name written without '^' ('John Smith-Jones') is one component
        out += [w for p in parts for w in re.split(r"[\s,.\-]+", p) if w]
    return out


# -- process-wide hooks ----------------------------------------------------------------------------------------
_installed = threading.Lock()
_done = False


def install() -> None:
    """Route warnings through logging and redact every log record (idempotent; see the module docstring)."""
    global _done
    with _installed:
        if not _done:
            base = logging.getLogRecordFactory()

            def factory(*args, **kwargs) -> logging.LogRecord:
                return _clean(base(*args, **kwargs))

            logging.setLogRecordFactory(factory)
            _done = True
        # Set each time: `warnings.catch_warnings()` blocks (pytest runs every test in one) restore the previous hook.
        warnings.showwarning = _show_warning


def _from_library(name: str) -> bool:
    return name.split(".", 1)[0] in LIBRARIES


def _clean(record: logging.LogRecord) -> logging.LogRecord:
    library = _from_library(record.name)
    try:
        text = record.getMessage()
    except Exception:  # a malformed format string must not take the log line (or the service) down
        text = str(record.msg)
    scope = _scope.get()
    if library and scope is None:
        text = WITHHELD
    elif scope is not None:
        text = scope.redact(text)
    record.msg, record.args = text, ()
    if library:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
    elif scope is not None and record.exc_info:
        record.exc_text = scope.redact(logging.Formatter().formatException(record.exc_info))
    return record


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one log line naming its category and module, through the redaction above."""
    module = _module(filename)
    text = WITHHELD if _from_library(module) and _scope.get() is None else str(message)
    logging.getLogger(WARNINGS_LOGGER).warning("%s from %s: %s", category.__name__, module, text)


def _module(filename: str) -> str:
    """'highdicom.valuerep' for .../site-packages/highdicom/valuerep.py (no full paths in logs)."""
    parts = Path(filename).with_suffix("").parts
    for i, part in enumerate(parts):
        if part in ("site-packages", "dist-packages"):
            return ".".join(parts[i + 1 :])
    return Path(filename).stem
