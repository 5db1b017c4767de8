"""PS3.15 Annex E Basic Application Level Confidentiality Profile: the attribute actions, as data.

Actions (Table E.1-1): X remove, Z empty (zero length), D replace with a dummy value, U replace the UID with a
consistent pseudonym, C clean (treated as X here: we do not keep free text), K keep (fracfl's own: class UIDs).
Two tables, the first one that names an attribute decides:

1. `BASIC_PROFILE`, by keyword: fracfl's explicit choices for the attributes of radiographs and of the objects
   fracfl writes, with the standard's compound actions (X/Z, Z/D, X/Z/D, X/D, X/Z/U*) resolved for those IODs.
2. `deid_table.TABLE_E1_1`, by tag: the whole of Table E.1-1 (DICOM 2026c), compound actions resolved by
   `standard_action` (empty rather than remove where the standard allows either, dummy only for text values).

`deid.py` adds safety nets for anything neither lists: every private element removed, every other person name
emptied, every other non-class UID pseudonymised, every other date/time removed.
"""

from __future__ import annotations

from client.dicom.deid_table import TABLE_E1_1, TABLE_E1_1_MASKED

BASIC_PROFILE: dict[str, str] = {
    # Patient
    "PatientName": "D",
    "PatientID": "D",
    "PatientBirthDate": "Z",
    "PatientBirthTime": "X",
    "PatientSex": "Z",
    "PatientAge": "X",
    "PatientSize": "X",
    "PatientWeight": "X",
    "PatientAddress": "X",
    "PatientTelephoneNumbers": "X",
    "PatientMotherBirthName": "X",
    "OtherPatientIDs": "X",
    "OtherPatientIDsSequence": "X",
    "OtherPatientNames": "X",
    "PatientBirthName": "X",
    "MilitaryRank": "X",
    "BranchOfService": "X",
    "MedicalRecordLocator": "X",
    "EthnicGroup": "X",
    "Occupation": "X",
    "AdditionalPatientHistory": "X",
    "PatientComments": "X",
    "PatientReligiousPreference": "X",
    "PatientInsurancePlanCodeSequence": "X",
    "PregnancyStatus": "X",
    "MedicalAlerts": "X",
    "Allergies": "X",
    "SmokingStatus": "X",
    "LastMenstrualDate": "X",
    "CountryOfResidence": "X",
    "RegionOfResidence": "X",
    "PatientState": "X",
    "ResponsiblePerson": "X",
    "ResponsibleOrganization": "X",
    "IssuerOfPatientID": "X",
    "PatientSexNeutered": "X",
    "PatientInstitutionResidence": "X",
    # Visit, study, request
    "AccessionNumber": "Z",
    "StudyID": "Z",
    "StudyDate": "Z",
    "StudyTime": "Z",
    "SeriesDate": "X",
    "SeriesTime": "X",
    "AcquisitionDate": "X",
    "AcquisitionTime": "X",
    "AcquisitionDateTime": "X",
    "ContentDate": "Z",
    "ContentTime": "Z",
    "InstanceCreationDate": "X",
    "InstanceCreationTime": "X",
    "OverlayDate": "X",
    "OverlayTime": "X",
    "CurveDate": "X",
    "CurveTime": "X",
    "StudyDescription": "X",
    "SeriesDescription": "X",
    "RequestAttributesSequence": "X",
    "RequestedProcedureDescription": "X",
    "RequestedProcedureID": "X",
    "ScheduledProcedureStepID": "X",
    "PerformedProcedureStepID": "X",
    "PerformedProcedureStepDescription": "X",
    "PerformedProcedureStepStartDate": "X",
    "PerformedProcedureStepStartTime": "X",
    "PerformedProcedureStepEndDate": "X",
    "PerformedProcedureStepEndTime": "X",
    "AdmissionID": "X",
    "AdmittingDiagnosesDescription": "X",
    "AdmittingDiagnosesCodeSequence": "X",
    "ReasonForStudy": "X",
    "RequestingPhysician": "X",
    "RequestingService": "X",
    "ImageComments": "X",
    "StudyComments": "X",
    "ReferencedPatientSequence": "X",
    "ReferencedStudySequence": "X",
    "ReferencedPerformedProcedureStepSequence": "X",
    "OrderEnteredBy": "X",
    "OrderEntererLocation": "X",
    "OrderCallbackPhoneNumber": "X",
    "FillerOrderNumberImagingServiceRequest": "X",
    "PlacerOrderNumberImagingServiceRequest": "X",
    "ProcedureCodeSequence": "X",
    # People
    "ReferringPhysicianName": "Z",
    "ReferringPhysicianAddress": "X",
    "ReferringPhysicianTelephoneNumbers": "X",
    "ReferringPhysicianIdentificationSequence": "X",
    "PerformingPhysicianName": "X",
    "PerformingPhysicianIdentificationSequence": "X",
    "NameOfPhysiciansReadingStudy": "X",
    "PhysiciansReadingStudyIdentificationSequence": "X",
    "PhysiciansOfRecord": "X",
    "PhysiciansOfRecordIdentificationSequence": "X",
    "OperatorsName": "X",
    "OperatorIdentificationSequence": "X",
    "ContentCreatorName": "Z",
    "VerifyingObserverName": "X",
    "PersonName": "X",
    "ReviewerName": "X",
    "ScheduledPerformingPhysicianName": "X",
    # Equipment and place
    "InstitutionName": "X",
    "InstitutionAddress": "X",
    "InstitutionalDepartmentName": "X",
    "InstitutionCodeSequence": "X",
    "StationName": "X",
    "DeviceSerialNumber": "X",
    "DetectorID": "X",
    "PlateID": "X",
    "CassetteID": "X",
    "GantryID": "X",
    "GeneratorID": "X",
    "DeviceUID": "U",
    "ProtocolName": "X",
    "AcquisitionDeviceProcessingDescription": "X",
    "DerivationDescription": "X",
    "ModifiedAttributesSequence": "X",
    "OriginalAttributesSequence": "X",
    "SourceImageSequence": "X",
    "ReferencedImageSequence": "X",
    "ContributingEquipmentSequence": "X",
    "FrameComments": "X",
    "TextString": "X",
    "TextComments": "X",
    "OverlayComments": "X",
    "OverlayData": "X",
    "CurveData": "X",
    "IconImageSequence": "X",
    "DigitalSignaturesSequence": "X",
    "MACParametersSequence": "X",
    "EncryptedAttributesSequence": "X",
    "RequestedContrastAgent": "X",
    "ContrastBolusAgent": "X",
    "ImagePresentationComments": "X",
    # UIDs (instance UIDs are pseudonymised consistently so results can be linked back at the site)
    "StudyInstanceUID": "U",
    "SeriesInstanceUID": "U",
    "SOPInstanceUID": "U",
    "FrameOfReferenceUID": "U",
    "SynchronizationFrameOfReferenceUID": "U",
    "ReferencedSOPInstanceUID": "U",
    "MediaStorageSOPInstanceUID": "U",
    "IrradiationEventUID": "U",
    "ConcatenationUID": "U",
    "DimensionOrganizationUID": "U",
    "InstanceCreatorUID": "X",
    "StorageMediaFileSetUID": "U",
    "TargetUID": "U",
    "UID": "U",
    "TransactionUID": "U",
    "SourceApplicationEntityTitle": "X",
    # Kept on purpose although they are UIDs: they name software and dictionaries, not people or studies.
    "ImplementationClassUID": "K",
    "SOPClassUID": "K",
    "MediaStorageSOPClassUID": "K",
    "ReferencedSOPClassUID": "K",
    "TransferSyntaxUID": "K",
    "CodingSchemeUID": "K",
    "ContextGroupExtensionCreatorUID": "K",
    "MappingResourceUID": "K",
}
"""Basic Profile action per attribute keyword."""

DUMMY_DATE = ""  # Z/D dates are emptied: the study date is a quasi-identifier and no model input needs it

# Attributes whose replaced values the site's linking table records, so results/feedback map back to the study.
LINKED = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")

# Code of the profile applied, for DeidentificationMethodCodeSequence (PS3.16 CID 7050).
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")

_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"})


def standard_action(tag: int, vr: str) -> str | None:
    """Table E.1-1's action for `tag`, as one of X, Z, D, U; None when the table does not list it.

    Compound actions: Z/D, X/Z and X/Z/D -> Z (present and empty keeps Type 2 attributes valid, and holds nothing);
    X/D -> D; X/Z/U* (sequences of references) -> X, or U for a UID. D needs a text value to replace: a sequence or
    binary value under D is removed instead (fracfl keeps radiographs, which carry none of these)."""
    action = TABLE_E1_1.get(int(tag))
    if action is None:
        group, element = int(tag) >> 16, int(tag) & 0xFFFF
        action = next(
            (a for (g, e, gm, em), a in TABLE_E1_1_MASKED.items() if group & gm == g and element & em == e), None
        )
    if action is None:
        return None
    action = {"Z/D": "Z", "X/Z": "Z", "X/Z/D": "Z", "X/D": "D"}.get(action, action)
    if action == "X/Z/U*":
        return "U" if vr == "UI" else "X"
    if action == "D" and vr not in _TEXT_VRS:
        return "X"
    return action
