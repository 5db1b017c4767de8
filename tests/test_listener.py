"""`fracfl listen`: the DICOM network service against real peers (pynetdicom, dcmtk's storescu, Orthanc)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from dicom_files import names_in, without_patient_identity
from orthanc_support import DCMTK_STORESCU, ORTHANC_AE, Orthanc, have_dcmtk, have_orthanc, referenced_uids
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    RTPlanStorage,
    Verification,
)
from tests_support import free_port

from client.dicom.results import result_uid
from client.inference.version import model_version
from client.listener.config import DestinationConfig, ListenConfig, PeerConfig
from client.listener.inference import build_processor
from client.listener.queue import DurableQueue, pseudonym
from client.listener.service import ListenerService
from common.errors import ConfigError

RG1 = Path(get_testdata_file("RG1_UNCR.dcm"))
RG3 = Path(get_testdata_file("RG3_UNCR.dcm"))
RG1_J2K = Path(get_testdata_file("RG1_J2KR.dcm"))  # the RG1 chest in JPEG 2000 lossless
needs_orthanc = pytest.mark.skipif(not have_orthanc(), reason="Orthanc not installed (apt-get install orthanc)")
needs_dcmtk = pytest.mark.skipif(not have_dcmtk(), reason="dcmtk not installed (apt-get install dcmtk)")
GSPS, SC = "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.7"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


@pytest.fixture(scope="module")
def synthetic_dx(tmp_path_factory) -> list[Path]:
    """Synthetic DX For Presentation files with made-up patient identities."""
    from common.synth import generate_dataset

    out = tmp_path_factory.mktemp("dx") / "site"
    generate_dataset(out, ["general_hospital"], images_per_site=4, size=128, seed=3, dicom=True, progress=False)
    return sorted(out.rglob("dicom/*.dcm"))


def journal(queue_dir: Path) -> list[dict]:
    path = queue_dir / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def scu(ae_title: str = "MODALITY", *contexts) -> AE:
    ae = AE(ae_title)
    for cx in contexts or (Verification, ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation):
        ae.add_requested_context(cx)
    return ae


@pytest.fixture
def service(tmp_path, tiny_weights):
    """A listener with the real DICOM pipeline on a free loopback port, keeping results in its outbox."""
    started = []

    def start(processor=None, **overrides) -> ListenerService:
        cfg = ListenConfig(
            host="127.0.0.1",
            port=0,
            queue_dir=str(tmp_path / "queue"),
            destination=None,
            retry_delay=0.2,
            status_every=0.5,
            model=str(tiny_weights),
            threads=1,
            **overrides,
        )
        svc = ListenerService(cfg, processor or build_processor(cfg))
        svc.start()
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop(timeout=10)


def test_echo_and_store_from_pynetdicom(service, tmp_path):
    svc = service(allowed_peers=[PeerConfig(ae_title="MODALITY", host="127.0.0.1")])
    assoc = scu().associate("127.0.0.1", svc.port, ae_title="FRACFL")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assert assoc.send_c_store(RG1).Status == 0x0000
    assoc.release()
    # Success means the object was already on disk: it is in the queue (or beyond) right after the response.
    assert [row["event"] for row in journal(svc.queue.root)][:1] == ["received"]
    wait_for(lambda: svc.queue.count("outbox") == 1, what="results in the outbox")
    item = next(svc.queue.dir("outbox").iterdir())
    meta = json.loads((item / "meta.json").read_text())
    assert meta["ref"] == pseudonym(dcmread(RG1, stop_before_pixels=True).SOPInstanceUID)
    assert meta["calling_ae"] == "MODALITY"
    assert sorted(name.split("-", 1)[1] for name in meta["files"]) == ["gsps.dcm", "sc.dcm", "sr.dcm"]
    wait_for(lambda: (svc.queue.root / "status.json").exists(), what="status.json")
    status = json.loads((svc.queue.root / "status.json").read_text())
    assert status["ae_title"] == "FRACFL" and set(status["queue"]) == {"incoming", "processing", "outbox", "failed"}


@needs_dcmtk
def test_store_from_dcmtk_storescu(service):
    """The guide's plain storescu line (uncompressed), and its profile for compressed files (JPEG 2000 here, which
    the plain line cannot send: storescu would have to decompress it)."""
    svc = service(allowed_peers=[PeerConfig(ae_title="DCMTK")])
    done = subprocess.run(
        [str(DCMTK_STORESCU), "-aet", "DCMTK", "-aec", "FRACFL", "127.0.0.1", str(svc.port), str(RG3)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    wait_for(lambda: svc.queue.count("outbox") == 1, what="results of the dcmtk upload")
    assert journal(svc.queue.root)[0]["calling_ae"] == "DCMTK"
    profile = Path(__file__).parents[1] / "conf" / "storescu-radiographs.cfg"
    done = subprocess.run(
        [
            str(DCMTK_STORESCU),
            "-xf",
            str(profile),
            "Radiographs",
            "-aet",
            "DCMTK",
            "-aec",
            "FRACFL",
            "127.0.0.1",
            str(svc.port),
            str(RG1_J2K),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "Failed" not in done.stdout + done.stderr, done.stdout + done.stderr
    wait_for(lambda: svc.queue.count("outbox") == 2, timeout=60, what="results of the JPEG 2000 upload")


def test_peers_not_allowed_are_refused(service):
    svc = service(allowed_peers=[PeerConfig(ae_title="PACS", host="10.0.0.0/8"), PeerConfig(ae_title="MODALITY")])
    for calling, called in (("INTRUDER", "FRACFL"), ("PACS", "FRACFL"), ("MODALITY", "SOMEONE")):
        # PACS is allowed only from 10/8 (we are on 127.0.0.1); a wrong called AE title is refused too.
        assoc = scu(calling).associate("127.0.0.1", svc.port, ae_title=called)
        assert assoc.is_rejected and not assoc.is_established, (calling, called)
    assoc = scu("MODALITY").associate("127.0.0.1", svc.port, ae_title="FRACFL")
    assert assoc.is_established
    assoc.release()
    assert svc.queue.count("incoming") == 0 and not journal(svc.queue.root)


@needs_dcmtk
def test_dcmtk_echo_refused_with_association_rejection(service):
    svc = service(allowed_peers=[PeerConfig(ae_title="PACS")])
    done = subprocess.run(
        ["/usr/bin/echoscu", "-aet", "INTRUDER", "-aec", "FRACFL", "127.0.0.1", str(svc.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "Association Rejected" in done.stdout + done.stderr


def test_bad_objects_are_quarantined_and_the_service_keeps_going(service, tmp_path, caplog):
    """A non-image, a radiograph with truncated pixel data and one whose JPEG 2000 data is damaged are quarantined
    by the pipeline, with reasons; the log has one line for each: reason code and transfer syntax, no traceback."""
    caplog.set_level(logging.DEBUG)
    broken = tmp_path / "broken.dcm"
    ds = dcmread(RG3)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    ds.save_as(broken)
    damaged = tmp_path / "damaged.dcm"
    ds = dcmread(RG1_J2K)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(256)) * 8])  # a J2K start, then garbage
    ds.save_as(damaged)
    svc = service()
    ae = scu("MODALITY", Verification, ComputedRadiographyImageStorage, RTPlanStorage)
    ae.add_requested_context(ComputedRadiographyImageStorage, JPEG2000Lossless)
    assoc = ae.associate("127.0.0.1", svc.port, ae_title="FRACFL")
    for f in (get_testdata_file("rtplan.dcm"), broken, damaged, RG3):
        assert assoc.send_c_store(f).Status == 0x0000
    assoc.release()
    expected = {"received": 4, "processed": 1, "failed": 3}
    wait_for(lambda: Counter(row["event"] for row in journal(svc.queue.root)) == expected, timeout=60, what="outcomes")
    reasons = {
        json.loads((p / "meta.json").read_text())["ref"]: (p / "reason.txt").read_text()
        for p in svc.queue.dir("failed").iterdir()
    }
    plan_ref = pseudonym(dcmread(get_testdata_file("rtplan.dcm"), stop_before_pixels=True).SOPInstanceUID)
    broken_ref = pseudonym(dcmread(broken, stop_before_pixels=True).SOPInstanceUID)
    damaged_ref = pseudonym(dcmread(damaged, stop_before_pixels=True).SOPInstanceUID)
    assert reasons.keys() == {plan_ref, broken_ref, damaged_ref}
    for text in reasons.values():  # reason code, the pipeline's sentence, where the file went
        assert text.startswith("quarantined: ") and "file: " in text and str(svc.queue.root / "quarantine") in text
    assert reasons[damaged_ref].startswith("quarantined: undecodable")
    assert len(set(reasons.values())) == 3
    assert svc.queue.count("failed") == 3 and svc.queue.count("outbox") == 1
    about_damaged = [r.getMessage() for r in caplog.records if damaged_ref in r.getMessage()]
    assert len(about_damaged) == 2 and "received" in about_damaged[0]  # received, then one line: code and syntax
    assert about_damaged[1].endswith(
        ": undecodable (JPEG 2000 Image Compression (Lossless Only) (1.2.840.10008.1.2.4.90))"
    )
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
    assert not any(r.name.startswith("pydicom") and r.levelno >= logging.ERROR for r in caplog.records)
    assoc = scu().associate("127.0.0.1", svc.port, ae_title="FRACFL")  # still serving
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_processor_crash_is_retried_then_parked(service):
    """An exception escaping the processor (a bug, not bad input) is retried with backoff, then parked in failed/."""
    calls = []

    def crashing(path: Path):
        calls.append(path)
        raise MemoryError("decoder blew up")

    svc = service(crashing, max_attempts=3)
    assoc = scu().associate("127.0.0.1", svc.port, ae_title="FRACFL")
    assert assoc.send_c_store(RG3).Status == 0x0000
    assoc.release()
    wait_for(lambda: svc.queue.count("failed") == 1, timeout=30, what="the item parked in failed/")
    reason = next(svc.queue.dir("failed").iterdir()) / "reason.txt"
    assert reason.read_text().startswith("gave up after 3 attempts: processing error MemoryError")
    assert "decoder blew up" in reason.read_text()  # the traceback is kept beside the object, not in the log
    assert len(calls) == 3 and Counter(r["event"] for r in journal(svc.queue.root))["retry"] == 2


def test_queue_recovery_finishes_or_requeues_exactly_once(tmp_path):
    q = DurableQueue(tmp_path / "q", max_attempts=2, retry_delay=0.0)
    a = q.put(b"A", "1.2.3", "1.2.840.10008.5.1.4.1.1.1", "M")
    b = q.put(b"B", "1.2.4", "1.2.840.10008.5.1.4.1.1.1", "M")
    (q.dir("tmp") / "half-written").mkdir()  # a receive that was never acknowledged
    # Crash points: `a` was processed and its results staged, `b` was mid-inference.
    a, b = q.claim(), q.claim()
    staged = q.dir("tmp") / f"{a.id}.out"
    staged.mkdir()
    (staged / "00-r.dcm").write_bytes(b"result")
    (staged / "meta.json").write_text(json.dumps({**a.meta, "files": ["00-r.dcm"]}))
    staged.rename(q.dir("outbox") / a.id)
    assert q.outbox() == []  # not handed to the sender while its original is still in processing/
    assert q.recover() == {"dropped_unacknowledged": 1, "finished": 1, "requeued": 1}
    assert [i.id for i in q.outbox()] == [a.id]
    again = q.claim()
    assert again.id == b.id and again.meta["attempts"] == 1 and q.claim() is None
    # A second interruption of the same object reaches max_attempts: it is parked, not looped on.
    q.recover()
    assert q.count("failed") == 1 and "interrupted" in (q.dir("failed") / b.id / "reason.txt").read_text()


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="ae_title"):
        ListenConfig(ae_title="A_TITLE_LONGER_THAN_16").check()
    with pytest.raises(ConfigError, match=r"allowed_peers\[0\]"):
        ListenConfig(allowed_peers=[PeerConfig()]).check()
    with pytest.raises(ConfigError, match=r"allowed_peers\[0\].host"):
        ListenerService(ListenConfig(allowed_peers=[PeerConfig(host="pacs.example")]), lambda path: [])
    with pytest.raises(ConfigError, match="config key model"):
        build_processor(ListenConfig())
    with pytest.raises(ConfigError, match="config key variant"):
        ListenConfig(variant="int4").check()


@needs_orthanc
def test_outbox_survives_an_unreachable_pacs(tmp_path, tiny_weights):
    """Results wait in outbox/ while the PACS is down and are delivered once it is up (and only then removed)."""
    lport = free_port()
    pacs = Orthanc(tmp_path / "orthanc", "FRACFL", lport, route=False)
    cfg = ListenConfig(
        host="127.0.0.1",
        port=lport,
        queue_dir=str(tmp_path / "queue"),
        retry_delay=0.2,
        max_retry_delay=0.5,
        send_timeout=5,
        model=str(tiny_weights),
        threads=1,
        destination=DestinationConfig(ORTHANC_AE, "127.0.0.1", pacs.dicom_port),
    )
    svc = ListenerService(cfg, build_processor(cfg))
    svc.start()
    try:
        assoc = scu().associate("127.0.0.1", lport, ae_title="FRACFL")
        assert assoc.send_c_store(RG3).Status == 0x0000
        assoc.release()
        wait_for(lambda: any(r["event"] == "send_retry" for r in journal(svc.queue.root)), what="a failed send")
        assert svc.queue.count("outbox") == 1
        with pacs:
            wait_for(lambda: svc.queue.count("outbox") == 0, what="delivery after the PACS came up")
            stored = listener_results(pacs)
        check_results(stored, RG3, tiny_weights)
        assert [r["event"] for r in journal(svc.queue.root)][-1] == "sent"
    finally:
        svc.stop(timeout=10)


def listener_results(pacs: Orthanc) -> dict[str, dict]:
    """Objects the listener stored in Orthanc (by C-STORE from FRACFL): SOP Instance UID -> simplified tags."""
    return {tags["SOPInstanceUID"]: tags for _, tags in pacs.received_from("FRACFL")}


def check_results(stored: dict[str, dict], source: Path, weights: Path) -> None:
    """GSPS, SR and SC of `source` are in the PACS, in its study, each referencing it by SOP Instance UID (the SC
    through its Source Image Sequence). Result UIDs derive from the source UID, model version and kind; any other
    object referencing the source is a duplicate.
    """
    src = dcmread(source, stop_before_pixels=True)
    version = model_version(weights)
    for kind, sop_class in (("gsps", GSPS), ("sr", SR_PREFIX), ("sc", SC)):
        tags = stored.get(result_uid(src, version, kind))
        assert tags is not None, f"no {kind} for {source.name} in the PACS"
        assert tags["SOPClassUID"].startswith(sop_class) and tags["StudyInstanceUID"] == src.StudyInstanceUID
        assert src.SOPInstanceUID in referenced_uids(tags), f"{kind} of {source.name} does not reference it"
    referencing = [t for t in stored.values() if src.SOPInstanceUID in referenced_uids(t)]
    assert len(referencing) == 3, f"{len(referencing)} objects reference {source.name}: expected its GSPS, SR, SC"


@needs_orthanc
def test_orthanc_routes_radiographs_and_receives_gsps_sr_sc(tmp_path, tiny_weights, synthetic_dx, caplog):
    """Uploads to a real Orthanc are auto-routed to the listener; the results land in Orthanc, referencing the source."""
    caplog.set_level(logging.DEBUG)
    lport = free_port()
    sources = [RG1, RG3, synthetic_dx[0]]
    with Orthanc(tmp_path / "orthanc", "FRACFL", lport) as pacs:
        cfg = ListenConfig(
            host="127.0.0.1",
            port=lport,
            queue_dir=str(tmp_path / "queue"),
            model=str(tiny_weights),
            allowed_peers=[PeerConfig(ae_title=ORTHANC_AE, host="127.0.0.1")],
            threads=1,
            destination=DestinationConfig(ORTHANC_AE, "127.0.0.1", pacs.dicom_port),
        )
        svc = ListenerService(cfg, build_processor(cfg))
        svc.start()
        try:
            for f in sources:
                pacs.upload(f)
            wait_for(lambda: len(list(pacs.received_from("FRACFL"))) >= 9, timeout=90, what="9 result objects")
            stored = listener_results(pacs)
        finally:
            svc.stop(timeout=10)
    for f in sources:
        check_results(stored, f, tiny_weights)
    assert svc.queue.count("outbox") == svc.queue.count("failed") == svc.queue.count("incoming") == 0
    logged = caplog.text
    for f in sources:
        ds = dcmread(f, stop_before_pixels=True)
        for value in (str(ds.PatientName), str(ds.PatientID), ds.get("PatientBirthDate"), ds.SOPInstanceUID):
            assert not value or value not in logged, "patient data or UID in the listener's log"


def start_listener(args: list[str], port: int, log: Path) -> subprocess.Popen:
    fracfl = Path(sys.executable).parent / "fracfl"
    proc = subprocess.Popen([str(fracfl), "listen", *args], stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115 (the child keeps it)
    ae = scu("MODALITY", Verification)

    def echo() -> bool:
        assert proc.poll() is None, log.read_text()
        assoc = ae.associate("127.0.0.1", port, ae_title="FRACFL")
        ok = assoc.is_established and assoc.send_c_echo().Status == 0x0000
        assoc.release() if assoc.is_established else None
        return ok

    wait_for(echo, timeout=90, what="fracfl listen to answer C-ECHO")
    return proc


@needs_orthanc
def test_killed_listener_loses_nothing_acknowledged(tmp_path, tiny_weights, synthetic_dx):
    """SIGKILL `fracfl listen` mid-work, restart it: every acknowledged object is processed once, results arrive.

    One source has no PatientID (nor birth date, sex, StudyID, accession, laterality) and patient and physician
    names highdicom quotes in a warning: its results arrive too, and neither name is in the listener's log."""
    lport = free_port()
    queue, log = tmp_path / "queue", tmp_path / "listen.log"
    noid = without_patient_identity(tmp_path / "noid.dcm")
    sources = [*synthetic_dx, noid, RG3]  # the slow one last: work is left when the first item is done
    with Orthanc(tmp_path / "orthanc", "FRACFL", lport, route=False) as pacs:
        args = [
            "host=127.0.0.1",
            f"port={lport}",
            f"queue_dir={queue}",
            f"model={tiny_weights}",
            "threads=1",
            f"destination.port={pacs.dicom_port}",
            "retry_delay=0.2",
            "status_every=1",
        ]
        proc = start_listener(args, lport, log)
        assoc = scu().associate("127.0.0.1", lport, ae_title="FRACFL")
        statuses = [assoc.send_c_store(f).Status for f in sources]
        assoc.release()
        assert statuses == [0x0000] * len(sources)
        wait_for(lambda: any(r["event"] == "processed" for r in journal(queue)), timeout=60, what="first item")
        proc.kill()
        proc.wait()
        before = Counter(r["event"] for r in journal(queue))
        assert before["received"] == len(sources) and before["processed"] < len(sources), before  # work was left
        # Whether the kill caught an item being processed (recovery then says so) or between two items: a race.
        interrupted = any(any((queue / state).iterdir()) for state in ("processing", "tmp"))

        proc = start_listener(args, lport, log)
        try:
            wait_for(
                lambda: sum(r["event"] == "sent" for r in journal(queue)) == len(sources),
                timeout=90,
                what="results of every acknowledged object",
            )
        finally:
            proc.terminate()  # SIGTERM: graceful stop, exit code 0
            assert proc.wait(30) == 0, log.read_text()[-2000:]
        stored = listener_results(pacs)
    for f in sources:
        check_results(stored, f, tiny_weights)
    processed = Counter(r["item"] for r in journal(queue) if r["event"] == "processed")
    assert len(processed) <= len(sources) and max(processed.values()) == 1
    assert ("recovered queue after restart" in log.read_text()) == interrupted
    logged = log.read_bytes() + (queue / "journal.jsonl").read_bytes() + (queue / "status.json").read_bytes()
    logged += b"".join(p.read_bytes() for p in (queue / "results").rglob("*.json"))
    assert b"<PatientName>" in log.read_bytes(), "highdicom's person-name warning, redacted, was expected"
    assert not names_in(logged), names_in(logged)
