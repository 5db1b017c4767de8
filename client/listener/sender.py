"""C-STORE SCU: sends result files from the outbox to the destination PACS, one association per result set."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from client.listener.config import DestinationConfig

MAX_CONTEXTS = 128  # per association (DICOM PS3.8)


class SendError(Exception):
    """The destination could not be reached or did not store a file; the message is safe to log."""


def _contexts(files: list[Path]) -> dict[str, set[str]]:
    """SOP class -> transfer syntaxes to propose: each file's own, plus the two uncompressed little-endian ones."""
    wanted: dict[str, set[str]] = {}
    for f in files:
        meta = dcmread(f, stop_before_pixels=True).file_meta
        wanted.setdefault(str(meta.MediaStorageSOPClassUID), {ExplicitVRLittleEndian, ImplicitVRLittleEndian}).add(
            str(meta.TransferSyntaxUID)
        )
    return wanted


def send_files(files: list[Path], dest: DestinationConfig, our_ae: str, timeout: float, on_stored=None) -> None:
    """Store every file at `dest`; `on_stored(path)` after each success. Raises SendError on the first failure."""
    ae = AE(ae_title=our_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    contexts = _contexts(files)
    if len(contexts) > MAX_CONTEXTS:
        raise SendError(f"{len(contexts)} SOP classes in one result set: more than {MAX_CONTEXTS} contexts")
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, sorted(syntaxes))
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no answer"
        raise SendError(f"association with {dest.ae_title}@{dest.host}:{dest.port} failed ({why})")
    try:
        for f in files:
            status = assoc.send_c_store(f)
            code = getattr(status, "Status", None)
            if code is None:
                raise SendError(f"no C-STORE response from {dest.ae_title} (connection lost or timed out)")
            if code != 0x0000 and not 0xB000 <= code <= 0xBFFF:  # success, or warning (stored with coercion)
                raise SendError(f"{dest.ae_title} refused a result (status 0x{code:04X})")
            if on_stored is not None:
                on_stored(f)
    finally:
        if assoc.is_established:
            assoc.release()
