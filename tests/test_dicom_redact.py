"""Values of the DICOM file being handled never reach a log line or warning, whoever emits it."""

from __future__ import annotations

import logging
import warnings

import highdicom as hd
import pydicom
from dicom_files import PATIENT_NAME, PHYSICIAN_NAME, names_in, without_patient_identity
from pydicom.data import get_testdata_file

from common.dicom import open_dataset, redact


def test_values_become_attribute_names_and_library_text_outside_a_file_is_withheld(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    source = without_patient_identity(tmp_path / "x.dcm")
    uid = str(pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID)
    with redact.handling():
        open_dataset(source)  # registers the file's values
        hd.valuerep.check_person_name(PATIENT_NAME)  # highdicom warns, quoting the name
        logging.getLogger("highdicom.sc").warning("bad referring physician %r", PHYSICIAN_NAME)
        logging.getLogger("fracfl.test").error("own line about %s (Zabriskie)", uid)
        try:
            raise ValueError(f"cannot use {PATIENT_NAME}")
        except ValueError:
            logging.getLogger("pydicom.pixels").exception("decoder failed")
    logging.getLogger("pydicom").warning("outside any file: %s", PATIENT_NAME)
    warnings.warn(
        f"stray {PHYSICIAN_NAME}", stacklevel=1
    )  # not a DICOM library: kept, as nothing is known to redact it
    text = caplog.text
    assert 'The string "<PatientName>" is unlikely' in text
    assert "bad referring physician '<ReferringPhysicianName>'" in text
    assert "own line about <SOPInstanceUID> (<PatientName>)" in text  # a name's part is matched too
    assert redact.WITHHELD in text and "Traceback" not in text and not any(r.exc_info for r in caplog.records)
    leaked = names_in("\n".join(r.getMessage() for r in caplog.records if "stray" not in r.getMessage()).encode())
    assert not leaked and uid not in text


def test_standard_uids_and_numbers_stay_readable():
    values = redact.identifying_values(pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm")))
    assert "1.2.840.10008.1.2.1" not in values  # transfer syntax: what a log line about decoding must name
    assert "1.2.840.10008.5.1.4.1.1.1" not in values  # CR Image Storage
    assert all(len(v) >= 3 for v in values)
