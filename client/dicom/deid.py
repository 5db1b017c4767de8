"""De-identification before anything is kept (training sets, feedback stores): PS3.15 Basic Profile with pseudonyms.

Pseudonymous UIDs and patient ids come from a keyed hash (HMAC-SHA256) with a secret that never leaves the site, so
the same original always maps to the same pseudonym at that site, while another site (another secret) gets
unrelated ones and nobody without the secret can recompute them. A local linking table (SQLite, readable only by
the site's service account) maps pseudonyms back to the originals so results and feedback can be tied to the study.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.datadict import dictionary_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

from client.dicom.deid_profile import BASIC_PROFILE, BASIC_PROFILE_CODE, DUMMY_DATE, LINKED, standard_action
from common.errors import FracflError

SECRET_FILE = "site_secret.key"
LINKS_FILE = "links.sqlite"
_PRIVATE = 0o600
_DUMMY = {
    "PN": "ANONYMOUS",
    "LO": "ANONYMOUS",
    "SH": "ANON",
    "DA": DUMMY_DATE,
    "TM": "",
    "DT": "",
    "CS": "",
    "AS": "",
    "DS": "0",
    "IS": "0",
}


class BurnedInAnnotation(FracflError):
    """The image says identifying text may be burned into its pixels: header de-identification is not enough."""


class SiteKeys:
    """The site's pseudonymisation secret and linking table, kept in `root` (created 0700, files 0600)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.secret = _load_or_create_secret(self.root / SECRET_FILE)
        self.links_path = self.root / LINKS_FILE
        os.close(os.open(self.links_path, os.O_WRONLY | os.O_CREAT, _PRIVATE))  # owner-only before SQLite writes a byte
        with closing(self._connect()) as db, db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS links (pseudonym TEXT PRIMARY KEY, kind TEXT NOT NULL, "
                "original TEXT NOT NULL, seen REAL)"
            )
            if "seen" not in {
                row[1] for row in db.execute("PRAGMA table_info(links)")
            }:  # a table from before retention
                db.execute("ALTER TABLE links ADD COLUMN seen REAL")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.links_path, timeout=30)

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self.secret, f"{kind}:{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """Pseudonymous UID: '2.25.' and 128 bits of the keyed hash (a valid UUID-derived UID, 44 characters at most)."""
        return f"2.25.{int.from_bytes(self._digest('uid', original)[:16], 'big')}"

    def patient_id(self, original: str) -> str:
        return f"ANON-{self._digest('patient', original)[:8].hex().upper()}"

    def person(self, name: str) -> str:
        """Pseudonym of a person an object names (a radiologist who annotated): 'OBS-' and 16 hex digits."""
        return f"OBS-{self._digest('person', name)[:8].hex().upper()}"

    def record(self, pairs: list[tuple[str, str, str]]) -> None:
        """Remember (pseudonym, kind, original) rows for linking back; the same pseudonym is stored once, with when it
        was last seen (UTC seconds), which retention (`fracfl site purge`) counts from."""
        if pairs:
            now = time.time()
            with closing(self._connect()) as db, db:
                db.executemany(
                    "INSERT INTO links VALUES (?, ?, ?, ?) ON CONFLICT(pseudonym) DO UPDATE SET seen = excluded.seen",
                    [(*p, now) for p in pairs],
                )

    def original(self, pseudonym: str) -> tuple[str, str] | None:
        """(kind, original value) behind a pseudonym made at this site, or None."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT kind, original FROM links WHERE pseudonym = ?", (pseudonym,)).fetchone()
        return (row[0], row[1]) if row else None


def _load_or_create_secret(path: Path) -> bytes:
    """The site secret, created on first use with owner-only permissions (O_EXCL: two processes never both write)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE)
    except FileExistsError:
        text = path.read_text().strip()
        if len(text) < 64:
            raise FracflError(
                f"{path}: site secret is damaged (expected 64 hex digits); restore it from backup"
            ) from None
        return bytes.fromhex(text)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return bytes.fromhex(path.read_text().strip())


class Deidentifier:
    """Returns a de-identified copy of a dataset (the original object is never modified).

    `burned_in="refuse"` (default) raises BurnedInAnnotation for images flagged BurnedInAnnotation=YES, because the
    Basic Profile requires such pixels to be cleaned, which fracfl does not do; "accept" is for sites that have
    checked that their flagged images carry no identifying text (e.g. only laterality markers).
    """

    def __init__(self, keys: SiteKeys, burned_in: str = "refuse"):
        if burned_in not in ("refuse", "accept"):
            raise ValueError(f"burned_in must be 'refuse' or 'accept', got {burned_in!r}")
        self.keys = keys
        self.burned_in = burned_in

    def __call__(self, ds: Dataset) -> Dataset:
        if self.burned_in == "refuse" and str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            raise BurnedInAnnotation(
                "image is flagged BurnedInAnnotation=YES: pixels may carry identifying text "
                "(set burned_in=accept only after checking this source's images)"
            )
        out = copy.deepcopy(ds)
        run = _Run(*patient_identity(ds))
        self._walk(out, run)
        if getattr(out, "file_meta", None) is not None:
            self._walk(out.file_meta, run)
        for keyword in ("PatientID", "PatientName"):  # always present in the copy: ingest splits by this pseudonym
            if not str(out.get(keyword, "") or "").startswith("ANON-"):
                setattr(out, keyword, self._patient(run))
        out.PatientIdentityRemoved = "YES"
        out.DeidentificationMethod = "PS3.15 E.1 Basic Profile; keyed-hash pseudonyms (fracfl)"
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE_CODE
        out.DeidentificationMethodCodeSequence = Sequence([code])
        out.LongitudinalTemporalInformationModified = "REMOVED"
        self.keys.record(run.links)
        return out

    def _walk(self, ds: Dataset, run: _Run) -> None:
        for elem in list(ds):
            if elem.tag.is_private:
                del ds[elem.tag]
                continue
            action = BASIC_PROFILE.get(_keyword(elem)) or standard_action(elem.tag, elem.VR) or _safety_net(elem)
            if action == "X" or action == "C":
                del ds[elem.tag]
            elif action == "Z":
                elem.value = None if elem.VR == "SQ" else ""
            elif action == "D":
                elem.value = self._dummy(elem, run)
            elif action == "U":
                elem.value = self._uids(elem.value, elem.keyword, run)
            elif elem.VR == "SQ":
                for item in elem.value:
                    self._walk(item, run)

    def _dummy(self, elem, run: _Run) -> str:
        if elem.keyword in ("PatientID", "PatientName"):
            # Name and id both become the patient pseudonym: studies of one patient stay together (no leakage
            # across training/validation splits) without any identifying value.
            return self._patient(run)
        return _DUMMY.get(elem.VR, "ANONYMOUS")

    def _patient(self, run: _Run) -> str:
        pid = self.keys.patient_id(run.patient)
        run.links.append((pid, run.patient_kind, run.patient))
        return pid

    def _uids(self, value, keyword: str, run: _Run):
        values = _values(value)
        out = []
        for v in values:
            if not v:
                out.append(v)
                continue
            pseudo = self.keys.uid(str(v))
            if keyword in LINKED or keyword in ("ReferencedSOPInstanceUID", "MediaStorageSOPInstanceUID"):
                run.links.append((pseudo, keyword, str(v)))
            out.append(pseudo)
        return out if len(values) != 1 else out[0]


@dataclass
class _Run:
    """State of one de-identification: whose pseudonym to use, and the link rows to record at the end."""

    patient: str
    patient_kind: str  # which attribute `patient` came from: the linking table's kind for the patient pseudonym
    links: list[tuple[str, str, str]] = field(default_factory=list)


def patient_identity(ds: Dataset) -> tuple[str, str]:
    """(value, attribute) the patient pseudonym is derived from: PatientID, or for images without one the
    StudyInstanceUID, so each such study counts as its own patient. Names are not used: they are neither unique nor
    spelt the same way twice. Never empty: all images without a PatientID must not become one 'patient'."""
    for keyword in ("PatientID", "StudyInstanceUID"):
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            return value, keyword
    return f"SOP:{ds.get('SOPInstanceUID', '')}", "SOPInstanceUID"


def _values(value) -> list:
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


def _keyword(elem) -> str:
    """Keyword, including repeating groups (overlays 60xx, curves 50xx) for which pydicom leaves it empty."""
    if elem.keyword:
        return elem.keyword
    try:
        return dictionary_keyword(elem.tag)
    except KeyError:
        return ""


def _safety_net(elem) -> str | None:
    """Action for attributes the table does not list: names emptied, instance UIDs pseudonymised, dates removed."""
    if elem.VR == "PN":
        return "Z"
    if elem.VR == "UI":
        return None if all((not v) or str(v) in UID_dictionary for v in _values(elem.value)) else "U"
    if elem.VR in ("DA", "DT", "TM"):
        return "X"
    return None
