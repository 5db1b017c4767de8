"""A small site for review-page tests: synthetic radiographs written as DICOM with fake patient identity, run through
the site's de-identification as the listener's keep_dir does, and recorded in a feedback store with fixed boxes (no
model run: the review page only needs findings, and fixed boxes make the page's geometry predictable)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
from dicom_files import PATIENT_NAME, PHYSICIAN_NAME

from client.dicom.deid import Deidentifier, SiteKeys
from client.feedback.accounts import Accounts
from client.feedback.store import Box, FeedbackStore
from common.synth import get_profile, render_radiograph
from common.synth.dicom import fictional_identity, write_dicom

PASSWORD = "correct horse battery"
# probability, model boxes, body part of the three cases (worklist order: highest probability first)
CASES = (
    (0.92, [Box(40, 60, 100, 120, score=0.92), Box(150, 150, 200, 210, score=0.55)]),
    (0.71, [Box(60, 40, 130, 100, score=0.71)]),
    (0.30, []),
)


@dataclass
class Site:
    store: FeedbackStore
    accounts: Accounts
    image_ids: list[int]
    phi: list[str]  # identifying values of the originals: none may appear in the store or on a page


def make_site(root: Path, size: int = 256) -> Site:
    profile = get_profile("general_hospital")
    rng = np.random.default_rng(16)
    keys, keep = SiteKeys(root / "deid"), root / "keep"
    keep.mkdir(parents=True)
    deidentify = Deidentifier(keys, burned_in="accept")  # synthetic images flag their laterality marker
    store = FeedbackStore(root / "feedback.db", class_names=["fracture", "avulsion"])
    phi, ids = [PATIENT_NAME, PHYSICIAN_NAME, "Zabriskie", "Fernsby"], []
    for k, (probability, boxes) in enumerate(CASES):
        image = render_radiograph(profile, rng, size, fracture=bool(boxes))
        identity = fictional_identity(rng, image.age_years)
        original = root / "incoming" / f"{k}.dcm"
        original.parent.mkdir(exist_ok=True)
        write_dicom(original, image, profile, identity, uid_key=f"review-test-{k}")
        ds = pydicom.dcmread(original)
        ds.PatientName, ds.ReferringPhysicianName = PATIENT_NAME, PHYSICIAN_NAME
        ds.PatientID, ds.AccessionNumber = f"PHI-PID-{k}-QZV", f"PHI-ACC-{k}-QZV"
        phi += [str(ds.PatientID), str(ds.AccessionNumber), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)]
        clean = deidentify(ds)
        kept = keep / f"{clean.SOPInstanceUID}.dcm"
        clean.save_as(kept, enforce_file_format=True)
        heat = keep / f"{clean.SOPInstanceUID}.heatmap.png"
        yy, xx = np.mgrid[0:size, 0:size]
        blob = np.exp(-((xx - 70) ** 2 + (yy - 90) ** 2) / (2 * 30.0**2))
        cv2.imwrite(str(heat), cv2.applyColorMap((blob * 255).astype(np.uint8), cv2.COLORMAP_JET))
        ids.append(
            store.record_image(
                sop_uid=str(clean.SOPInstanceUID),
                image_ref=str(kept),
                model_version="demo/v0007",
                probability=probability,
                boxes=boxes,
                heatmap_ref=str(heat),
                body_part=str(clean.get("BodyPartExamined", "")) or None,
                patient=str(clean.PatientID),
            )
        )
    accounts = Accounts(store)
    accounts.add_user("ada", PASSWORD, "reviewer")
    accounts.add_user("root", PASSWORD, "admin")
    return Site(store, accounts, ids, phi)
