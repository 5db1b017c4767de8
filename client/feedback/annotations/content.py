"""Reading SR-style content trees (shared by measurement SRs and Key Object Selections, PS3.3 C.17.3)."""

from __future__ import annotations

from pydicom.dataset import Dataset

from client.feedback.annotations.parsed import Malformed, person_name

PERSON_OBSERVER_NAME = ("121008", "DCM")


def code(item: Dataset) -> tuple[str, str, str]:
    """(value, scheme, meaning) of a code sequence item."""
    return (
        str(item.get("CodeValue", "")),
        str(item.get("CodingSchemeDesignator", "")),
        str(item.get("CodeMeaning", "")),
    )


def concept(item: Dataset) -> tuple[str, str]:
    """(value, scheme) of a content item's concept name; ('', '') when it has none."""
    names = item.get("ConceptNameCodeSequence") or []
    return code(names[0])[:2] if names else ("", "")


def coded_value(item: Dataset) -> tuple[str, str, str] | None:
    """The code a CODE content item holds, else None."""
    values = item.get("ConceptCodeSequence") or []
    return code(values[0]) if item.get("ValueType") == "CODE" and values else None


def referenced(item: Dataset) -> list[str]:
    """SOP Instance UIDs an IMAGE or COMPOSITE content item points at."""
    uids = [str(ref.get("ReferencedSOPInstanceUID", "") or "").strip() for ref in item.get("ReferencedSOPSequence", [])]
    if not uids or not all(uids):
        raise Malformed(f"an {item.get('ValueType')} content item without a Referenced SOP Instance UID")
    return uids


def evidence(ds: Dataset) -> list[str]:
    """Every instance the document lists as evidence (Current Requested Procedure / Pertinent Other Evidence)."""
    uids = []
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(keyword, []):
            for series in study.get("ReferencedSeriesSequence", []):
                uids += [str(r.get("ReferencedSOPInstanceUID", "")) for r in series.get("ReferencedSOPSequence", [])]
    return [u for u in uids if u]


def observer(ds: Dataset) -> str:
    """Person Observer Name of the observation context, else the verifying observer, else the operator."""
    names = [
        i.get("PersonName")
        for i in ds.get("ContentSequence", [])
        if i.get("ValueType") == "PNAME" and concept(i) == PERSON_OBSERVER_NAME
    ]
    verifying = [v.get("VerifyingObserverName") for v in ds.get("VerifyingObserverSequence", [])]
    return person_name(*names, *verifying, ds.get("OperatorsName"))
