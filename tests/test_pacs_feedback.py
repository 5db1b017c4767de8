"""Radiologists' PACS annotations (GSPS, TID 1500 SR, KOS rejection notes, made with highdicom) become verdicts in the
site's feedback store; what cannot be applied is set aside with a reason. The last test sends them through a real
Orthanc to a running listener that analysed the images itself."""

from __future__ import annotations

import math
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from dicom_files import small_cr
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from tests_support import NANO

from client.dicom.deid import SiteKeys
from client.feedback.annotations.apply import UNKNOWN_OBSERVER, PacsFeedback
from client.feedback.annotations.geometry import NotARegion, iou, match, shape_box
from client.feedback.store import Box, ConflictError, FeedbackStore

RADIOLOGIST = "Quaxley-Brandt^Wilhelmina"  # unique strings: must never reach the store or the log
PSEUDONYMISED_AS = "QUAXLEY-BRANDT^WILHELMINA"  # the spelling the site's keyed hash is taken of
FRACTURE = hd.sr.CodedConcept("125605004", "SCT", "Fracture of bone")
REJECTED_QUALITY = hd.sr.CodedConcept("113001", "DCM", "Rejected for Quality Reasons")
OF_INTEREST = hd.sr.CodedConcept("113000", "DCM", "Of Interest")


# -- objects as a viewer would send them ------------------------------------------------------------------------------
def rect(x1: float, y1: float, x2: float, y2: float) -> np.ndarray:
    """A rectangle as viewers draw it in a GSPS or SR: a closed polyline (first point repeated)."""
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float32)


def gsps(images: list[Dataset], graphics: list[tuple[str, np.ndarray, str]], creator: str = RADIOLOGIST) -> Dataset:
    """A radiologist's GSPS on `images` (one study): `graphics` are (graphic type, points, units PIXEL/DISPLAY)."""
    layer = hd.pr.GraphicLayer(layer_name="READING", order=1)
    objects = [hd.pr.GraphicObject(graphic_type=kind, graphic_data=data, units=units) for kind, data, units in graphics]
    ps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=images,
        series_instance_uid=generate_uid(),
        series_number=77,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="ViewerCo",
        manufacturer_model_name="Reader",
        software_versions="9",
        device_serial_number="1",
        content_label="READING",
        content_creator_name=creator,
        graphic_annotations=[
            hd.pr.GraphicAnnotation(referenced_images=images, graphic_layer=layer, graphic_objects=objects)
        ],
        graphic_layers=[layer],
    )
    return ps


def measurement_sr(groups: list, evidence: list[Dataset], observer: str = RADIOLOGIST) -> Dataset:
    """A TID 1500 report signed by `observer` (Person Observer Name in the observation context)."""
    person = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=observer),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=person),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=78,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="ViewerCo",
    )


def outlined(image: Dataset, points: np.ndarray, finding=FRACTURE, name: str = "fracture") -> object:
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier=name),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=points,
            source_image=hd.sr.SourceImageForRegion.from_source_image(image),
        ),
        finding_type=finding,
    )


def no_fracture(image: Dataset) -> object:
    """An image-level group: finding Fracture, evaluated Absent (the SR way of saying 'no fracture' here)."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="image"),
        finding_type=FRACTURE,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=FRACTURE, value=codes.SCT.Absent)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(image)],
    )


def kos(images: list[Dataset], title=REJECTED_QUALITY) -> Dataset:
    person = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=RADIOLOGIST),
    )
    content = hd.ko.KeyObjectSelection(document_title=title, referenced_objects=images, observer_person_context=person)
    return hd.ko.KeyObjectSelectionDocument(
        evidence=images,
        content=content,
        series_instance_uid=generate_uid(),
        series_number=79,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="ViewerCo",
    )


def radiograph(rows: int = 200, columns: int = 300) -> Dataset:
    """A CR image as the PACS holds it (non-square, so x and y cannot be swapped unnoticed)."""
    ds = small_cr(256)
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = bytes(rows * columns * 2)
    ds.PatientName = "Abernathy-Zoll^Quentin"
    return ds


def verdict_summary(store: FeedbackStore) -> list[tuple]:
    """(image id, kind, box id or None, new box rounded or None) of every verdict, in order."""
    out = []
    for v in store.verdicts():
        box = (v.value or {}).get("box")
        out.append(
            (
                v.image_id,
                v.kind,
                v.box_id if v.kind not in ("add",) else None,
                tuple(round(c, 1) for c in box) if box else None,
            )
        )
    return out


# -- geometry ------------------------------------------------------------------------------------------------------
def test_shapes_become_boxes_and_lines_do_not():
    assert shape_box("POLYLINE", rect(10, 20, 50, 80).ravel()) == (10, 20, 50, 80)
    assert shape_box("POLYLINE", [10, 20, 50, 20, 50, 80, 10, 80]) == (10, 20, 50, 80)  # 4 corners, not closed
    assert shape_box("CIRCLE", [30, 40, 30, 50]) == (20, 30, 40, 50)
    assert shape_box("ELLIPSE", [10, 50, 90, 50, 50, 30, 50, 70]) == (10, 30, 90, 70)  # axis-aligned
    # an ellipse rotated by 45 degrees, semi-axes 20 and 10: half extents sqrt((20^2 + 10^2) / 2)
    a, b = 20 / math.sqrt(2), 10 / math.sqrt(2)
    box = shape_box("ELLIPSE", [100 - a, 100 - a, 100 + a, 100 + a, 100 - b, 100 + b, 100 + b, 100 - b])
    half = math.sqrt(250)
    assert box == pytest.approx((100 - half, 100 - half, 100 + half, 100 + half))
    for kind, points in (
        ("POLYLINE", [0, 0, 10, 10]),
        ("POLYLINE", [0, 0, 10, 10, 20, 0]),
        ("POINT", [5, 5]),
        ("CIRCLE", [5, 5, 5, 5]),
    ):
        with pytest.raises(NotARegion):
            shape_box(kind, points)
    with pytest.raises(ValueError, match="CIRCLE needs 2 points"):
        shape_box("CIRCLE", [1, 2, 3, 4, 5, 6])


def test_matching_confirms_moves_adds_and_leaves_the_rest_unreviewed():
    boxes = [(10, 10, 50, 50), (100, 100, 140, 140), (200, 10, 240, 50)]
    annotations = [
        (12, 12, 52, 52),  # IoU 0.82 with box 0: confirm
        (120, 120, 170, 170),  # overlaps box 1 a little: move it
        (300, 300, 320, 320),  # touches nothing: a missed fracture
        (20, 20, 45, 45),
    ]  # inside box 0, which the better match takes: a second fracture
    got = match(annotations, boxes)
    assert [(m.kind, m.annotation, m.target) for m in got] == [
        ("confirm", 0, 0),
        ("move", 1, 1),
        ("add", 2, None),
        ("add", 3, None),
    ]
    assert iou(boxes[1], annotations[1]) < 0.5 and 2 not in {m.target for m in got}  # box 2: no verdict at all


# -- objects applied to a store ----------------------------------------------------------------------------------
@pytest.fixture
def site(tmp_path):
    keys = SiteKeys(tmp_path / "deid")
    store = FeedbackStore(tmp_path / "feedback.sqlite")
    return store, keys, PacsFeedback(store, keys)


def record(store: FeedbackStore, keys: SiteKeys, image: Dataset, boxes: list[tuple[float, float, float, float]]) -> int:
    """What the listener records after analysing `image`: its kept copy's pseudonymous UID and the model's boxes."""
    pseudonym = keys.uid(str(image.SOPInstanceUID))
    return store.record_image(
        sop_uid=pseudonym,
        image_ref=f"kept/{pseudonym}.dcm",
        model_version="v-test",
        probability=0.9,
        boxes=[Box(*b, cls=0, score=0.8) for b in boxes],
    )


def test_gsps_sr_and_kos_become_exactly_these_verdicts(site, tmp_path):
    store, keys, feedback = site
    a, b, c, never = radiograph(), radiograph(), radiograph(), radiograph()
    ia = record(store, keys, a, [(10, 10, 50, 50), (100, 100, 140, 140), (200, 10, 240, 50)])
    ib = record(store, keys, b, [(30, 30, 90, 90)])
    ic = record(store, keys, c, [(60, 60, 80, 80)])
    box_a = [bx.id for bx in store.image(ia).boxes]
    box_b = store.image(ib).boxes[0].id

    ps = gsps(
        [a],
        [
            ("POLYLINE", rect(12, 12, 52, 52), "PIXEL"),  # confirms box a0
            # an ellipse over box a1 but shifted: moves it
            ("ELLIPSE", np.array([[120, 150], [180, 150], [150, 125], [150, 175]], np.float32), "PIXEL"),
            # display units: a tenth of the 300 x 200 image from (0.9, 0.8): a box the model missed
            ("CIRCLE", np.array([[0.9, 0.8], [0.9, 0.85]], np.float32), "DISPLAY"),
            ("POINT", np.array([[5, 5]], np.float32), "PIXEL"),
        ],
    )  # marks no area: set aside
    report = measurement_sr(
        [outlined(b, rect(32, 28, 88, 92)), outlined(never, rect(1, 1, 9, 9), name="elsewhere"), no_fracture(c)],
        evidence=[b, c, never],
    )
    rejection = kos([c])
    outcomes = [feedback.apply(ds) for ds in (ps, report, rejection)]

    assert [(o.verdicts, o.set_aside) for o in outcomes] == [(3, 1), (2, 1), (1, 0)]
    assert verdict_summary(store) == [
        (ia, "confirm", box_a[0], None),
        (ia, "move", box_a[1], (120.0, 125.0, 180.0, 175.0)),
        (ia, "add", None, (260.0, 150.0, 280.0, 170.0)),  # centre (0.9 * 300, 0.8 * 200), radius 0.05 * 200
        (ib, "confirm", box_b, None),
        (ic, "no_fracture", None, None),
        (ic, "note", None, None),
    ]
    verdicts = store.verdicts()
    reviewer = keys.person(PSEUDONYMISED_AS)
    assert {v.reviewer for v in verdicts} == {reviewer} and reviewer.startswith("OBS-")
    assert [v.source for v in verdicts] == ["pacs-gsps"] * 3 + ["pacs-sr"] * 2 + ["pacs-kos"]
    assert {v.source_ref for v in verdicts[:3]} == {keys.uid(str(ps.SOPInstanceUID))}
    assert verdicts[-1].value["note"] == "withdrawn in PACS: Rejected for Quality Reasons (DCM 113001)"
    statuses = {bx.id: bx.status for bx in store.image(ia).boxes}
    assert statuses[box_a[2]] == "proposed"  # no annotation near it: unreviewed, not rejected
    aside = [(i.reason, i.source, i.object_uid) for i in store.set_aside_items()]
    assert aside == [
        ("not_a_region", "pacs-gsps", keys.uid(str(ps.SOPInstanceUID))),
        ("unknown_image", "pacs-sr", keys.uid(str(report.SOPInstanceUID))),
    ]
    assert keys.uid(str(never.SOPInstanceUID)) in store.set_aside_items()[1].detail

    # The PACS sends everything again: nothing is recorded twice.
    again = [feedback.apply(ds) for ds in (ps, report, rejection)]
    assert [o.verdicts for o in again] == [0, 0, 0] and [o.already for o in again] == [3, 2, 1]
    assert len(store.verdicts()) == 6 and len(store.set_aside_items()) == 2

    # Only pseudonyms in the store: no names, no original UIDs.
    data = b"".join(p.read_bytes() for p in tmp_path.glob("feedback.sqlite*"))
    originals = [str(d.SOPInstanceUID) for d in (a, b, c, never, ps, report)]
    for value in (RADIOLOGIST, "Quaxley", "QUAXLEY", "Wilhelmina", "Abernathy", *originals):
        assert value.encode() not in data, value


def test_rejections_only_and_what_cannot_be_applied(site, tmp_path):
    store, keys, feedback = site
    image = radiograph()
    record(store, keys, image, [(10, 10, 50, 50)])
    interest = feedback.apply(kos([image], OF_INTEREST))  # a key image note, not a rejection
    nameless = gsps([image], [("POLYLINE", rect(10, 10, 50, 50), "PIXEL")], creator="")
    assert feedback.apply(nameless).verdicts == 1 and store.verdicts()[0].reviewer == UNKNOWN_OBSERVER
    assert interest.wholly_set_aside and interest.reasons == ("not_a_rejection",)
    # A damaged presentation state (graphic data cut short) and a file that is not DICOM at all.
    broken = gsps([image], [("POLYLINE", rect(10, 10, 50, 50), "PIXEL")])
    broken.GraphicAnnotationSequence[0].GraphicObjectSequence[0].GraphicData = [1.0, 2.0, 3.0]
    assert feedback.apply(broken).reasons == ("bad_graphic",)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all" * 10)
    assert feedback.apply_file(junk).reasons == ("malformed",)
    assert [i.reason for i in store.set_aside_items()] == ["not_a_rejection", "bad_graphic", "malformed"]
    assert len(store.verdicts()) == 1


def test_a_reviewer_editing_the_same_box_meanwhile_wins_a_conflict_then_the_retry_applies(site, monkeypatch):
    """The listener matched an outline against a box that a reviewer moved before the verdict was written: the store
    refuses the stale confirmation; applied again (the listener retries), the outline is matched against the box
    where it is now, which it no longer overlaps: a fracture the model missed."""
    store, keys, feedback = site
    image = radiograph()
    image_id = record(store, keys, image, [(10, 10, 50, 50)])
    stale = store.image(image_id)
    store.add_verdict(
        image_id=image_id,
        reviewer="rev-1",
        kind="move",
        box_id=stale.boxes[0].id,
        box=Box(100, 100, 140, 140),
        expected_version=stale.boxes[0].version,
    )
    ps = gsps([image], [("POLYLINE", rect(12, 12, 52, 52), "PIXEL")])
    with monkeypatch.context() as m:  # the race: the listener read the image just before the reviewer's edit
        m.setattr(store, "image_by_sop_uid", lambda uid: stale)
        with pytest.raises(ConflictError):
            feedback.apply(ps)
    assert feedback.apply(ps).verdicts == 1
    radiologist = keys.person(PSEUDONYMISED_AS)
    assert [(v.reviewer, v.kind) for v in store.verdicts()] == [("rev-1", "move"), (radiologist, "add")]


def test_fracfls_own_results_coming_back_are_ignored(site):
    store, keys, feedback = site
    image = radiograph()
    record(store, keys, image, [(10, 10, 50, 50)])
    own = gsps([image], [("POLYLINE", rect(10, 10, 50, 50), "PIXEL")], creator="FRACFL^MODEL")
    own.Manufacturer = "fracfl"  # as client.dicom.results writes it
    outcome = feedback.apply(own)
    assert outcome.own_result and outcome.verdicts == 0
    assert not store.verdicts() and not store.set_aside_items()


# -- through a real Orthanc to a running listener ------------------------------------------------------------------
@pytest.fixture(scope="module")
def seeded_model(tmp_path_factory) -> Path:
    """An untrained tiny detector (seeded): it reports one box per image at a near-zero operating point."""
    import torch

    from common.nn.model import build_model
    from common.nn.weights import save_weights

    torch.manual_seed(0)
    return save_weights(build_model(NANO), NANO, tmp_path_factory.mktemp("model") / "tiny.safetensors", {"imgsz": 128})


def cr_file(path: Path, patient: str, rows: int = 240, columns: int = 320) -> Dataset:
    """A real CR radiograph (RG3) resized to a non-square shape, as the modality stores it in the PACS."""
    import cv2

    ds = small_cr(256)
    ds.PixelData = cv2.resize(ds.pixel_array, (columns, rows), interpolation=cv2.INTER_AREA).tobytes()
    ds.Rows, ds.Columns = rows, columns
    ds.PatientName, ds.PatientID = patient, f"PID-{patient.split('^')[0]}"
    ds.save_as(path, enforce_file_format=True)
    return ds


def fracfl_gsps_box(pacs, image: Dataset) -> tuple[float, ...]:
    """The box fracfl's own GSPS shows over `image` in the PACS (bounding box of its first outline)."""
    from orthanc_support import referenced_uids
    from test_listener import GSPS, wait_for

    def find():
        return next(
            (
                tags
                for _, tags in pacs.received_from("FRACFL")
                if tags["SOPClassUID"] == GSPS and str(image.SOPInstanceUID) in referenced_uids(tags)
            ),
            None,
        )

    data = wait_for(find, timeout=60, what="fracfl's GSPS in the PACS")["GraphicAnnotationSequence"][0][
        "GraphicObjectSequence"
    ][0]["GraphicData"]
    values = [float(v) for v in (data.split("\\") if isinstance(data, str) else data)]
    return (min(values[0::2]), min(values[1::2]), max(values[0::2]), max(values[1::2]))


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.skipif(not Path("/usr/sbin/Orthanc").is_file(), reason="Orthanc not installed (apt-get install orthanc)")
def test_annotations_sent_through_orthanc_become_verdicts(tmp_path, seeded_model, caplog):
    """Radiographs reach the listener through Orthanc's routing and are analysed and recorded; a radiologist's GSPS,
    SR and KOS on them, stored in the same Orthanc, reach it the same way and become exactly the expected verdicts.
    A GSPS on an image the listener never saw is set aside (and kept in failed/); fracfl's own results stored in
    Orthanc are not routed back; no name or original UID reaches the store or the log."""
    import logging

    from orthanc_support import ANNOTATIONS, ORTHANC_AE, RADIOGRAPHS, Orthanc, free_port
    from test_listener import journal, wait_for

    from client.listener.config import DestinationConfig, ListenConfig, PeerConfig
    from client.listener.inference import build_processor
    from client.listener.service import ListenerService
    from common.config import EvalConfig

    caplog.set_level(logging.DEBUG)
    a = cr_file(tmp_path / "a.dcm", "Abernathy-Zoll^Quentin")
    b = cr_file(tmp_path / "b.dcm", "Brambleworth^Ottilie")
    never = cr_file(tmp_path / "never.dcm", "Sentwhere^Never")
    keep, db = tmp_path / "site" / "kept", tmp_path / "site" / "feedback.db"
    lport = free_port()
    with Orthanc(tmp_path / "orthanc", "FRACFL", lport, modalities=RADIOGRAPHS + ANNOTATIONS) as pacs:
        cfg = ListenConfig(
            host="127.0.0.1",
            port=lport,
            queue_dir=str(tmp_path / "queue"),
            model=str(seeded_model),
            allowed_peers=[PeerConfig(ae_title=ORTHANC_AE, host="127.0.0.1")],
            threads=1,
            heatmap=False,
            destination=DestinationConfig(ORTHANC_AE, "127.0.0.1", pacs.dicom_port),
            keep_dir=str(keep),
            feedback_db=str(db),
            eval=EvalConfig(conf=0.0001, max_det=1),
        )
        svc = ListenerService(cfg, build_processor(cfg))
        svc.start()
        try:
            store, keys = FeedbackStore(db), SiteKeys(tmp_path / "site" / "deid")
            for name in ("a.dcm", "b.dcm"):
                pacs.upload(tmp_path / name)
            wait_for(
                lambda: all(store.image_by_sop_uid(keys.uid(str(d.SOPInstanceUID))) for d in (a, b)),
                timeout=90,
                what="both radiographs analysed and recorded",
            )
            row_a, row_b = (store.image_by_sop_uid(keys.uid(str(d.SOPInstanceUID))) for d in (a, b))
            assert len(row_a.boxes) == len(row_b.boxes) == 1, "the operating point should give one box per image"
            box_a, box_b = row_a.boxes[0], row_b.boxes[0]
            # The annotations are drawn in the original's pixels; the stored boxes are in the kept copy's, which is
            # the original's: same size, and the boxes are those the PACS got in fracfl's own GSPS.
            kept = dcmread(row_a.image_ref, stop_before_pixels=True)
            assert (kept.Rows, kept.Columns) == (a.Rows, a.Columns)
            ax1, ay1, ax2, ay2 = box_a.box.as_list()
            bx1, by1, bx2, by2 = box_b.box.as_list()
            assert fracfl_gsps_box(pacs, a) == pytest.approx((ax1, ay1, ax2, ay2), abs=1e-3)
            # a quarter of the model's box (IoU 0.25): a correction, not a confirmation
            half_b = (bx1, by1, bx1 + (bx2 - bx1) / 2, by1 + (by2 - by1) / 2)
            objects = {
                "gsps": gsps(
                    [a],
                    [
                        ("POLYLINE", rect(ax1, ay1, ax2, ay2), "PIXEL"),  # the model's box: confirmed
                        ("CIRCLE", np.array([[20, 20], [20, 28]], np.float32), "PIXEL"),
                    ],
                ),  # a second one
                "sr": measurement_sr([outlined(b, rect(*half_b))], evidence=[b]),
                "kos": kos([b]),
                "unknown": gsps([never], [("POLYLINE", rect(10, 10, 60, 60), "PIXEL")]),
            }
            before = sum(r["event"] == "received" for r in journal(svc.queue.root))
            for name, ds in objects.items():
                pacs.upload(save(ds, tmp_path / f"{name}.dcm"))
            wait_for(
                lambda: sum(r["event"] in ("processed", "failed") for r in journal(svc.queue.root)) == before + 4,
                timeout=90,
                what="the four annotation objects handled",
            )
        finally:
            svc.stop(timeout=10)
    events = journal(svc.queue.root)
    assert sum(r["event"] == "received" for r in events) == 6, "fracfl's own results must not be routed back to it"
    assert verdict_summary(store) == [
        (row_a.id, "confirm", box_a.id, None),
        (row_a.id, "add", None, (12.0, 12.0, 28.0, 28.0)),
        (row_b.id, "move", box_b.id, tuple(round(v, 1) for v in half_b)),
        (row_b.id, "note", None, None),
    ]
    reviewer = keys.person(PSEUDONYMISED_AS)
    assert {(v.reviewer, v.source) for v in store.verdicts()} == {
        (reviewer, "pacs-gsps"),
        (reviewer, "pacs-sr"),
        (reviewer, "pacs-kos"),
    }
    aside = store.set_aside_items()
    assert [(i.reason, i.source, i.object_uid) for i in aside] == [
        ("unknown_image", "pacs-gsps", keys.uid(str(objects["unknown"].SOPInstanceUID)))
    ]
    failed = list(svc.queue.dir("failed").iterdir())
    assert len(failed) == 1
    assert (failed[0] / "reason.txt").read_text().startswith("quarantined: annotation set aside: unknown_image")
    kept_aside = dcmread(failed[0] / "object.dcm")  # the object itself is kept, to re-queue later
    assert kept_aside.SOPInstanceUID == objects["unknown"].SOPInstanceUID
    data = b"".join(p.read_bytes() for p in db.parent.glob("feedback.db*")) + caplog.text.encode()
    originals = [str(d.SOPInstanceUID) for d in (a, b, never, *objects.values())]
    for value in (
        RADIOLOGIST,
        "QUAXLEY",
        "Quaxley",
        "Wilhelmina",
        "Abernathy",
        "Brambleworth",
        "Sentwhere",
        "PID-",
        *originals,
    ):
        assert value.encode() not in data, value
