"""`fracfl listen`: the DICOM network service against real peers (pynetdicom, dcmtk's storescu, Orthanc)."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage, RTPlanStorage, Verification

from client.listener.config import DestinationConfig, ListenConfig, PeerConfig
from client.listener.processor import Quarantine
from client.listener.queue import DurableQueue, pseudonym
from client.listener.service import ListenerService
from common.errors import ConfigError
from orthanc_support import DCMTK_STORESCU, ORTHANC_AE, Orthanc, free_port, have_dcmtk, have_orthanc, referenced_uids

RG1 = Path(get_testdata_file("RG1_UNCR.dcm"))
RG3 = Path(get_testdata_file("RG3_UNCR.dcm"))
needs_orthanc = pytest.mark.skipif(not have_orthanc(), reason="Orthanc not installed (apt-get install orthanc)")
needs_dcmtk = pytest.mark.skipif(not have_dcmtk(), reason="dcmtk not installed (apt-get install dcmtk)")


class DerivedCopy:
    """Network-layer tests only: one derived object per input (new UID), quarantines non-radiographs."""

    def __init__(self, out: Path):
        self.out = out
        self.seen: list[str] = []

    def __call__(self, path: Path) -> list[Path]:
        ds = dcmread(path)
        self.seen.append(ds.SOPInstanceUID)
        if ds.Modality not in ("CR", "DX", "MG"):
            raise Quarantine(f"not a radiograph (modality {ds.Modality})")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        self.out.mkdir(exist_ok=True)
        target = self.out / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(target)
        return [target]


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
    for cx in contexts or (Verification, ComputedRadiographyImageStorage):
        ae.add_requested_context(cx)
    return ae


@pytest.fixture
def service(tmp_path):
    """A listener on a free loopback port that keeps results in its outbox (no destination)."""
    started = []

    def start(processor=None, **overrides) -> ListenerService:
        cfg = ListenConfig(host="127.0.0.1", port=0, queue_dir=str(tmp_path / "queue"), destination=None,
                           retry_delay=0.2, status_every=0.5, **overrides)
        svc = ListenerService(cfg, processor or DerivedCopy(tmp_path / "results"))
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
    assert meta["calling_ae"] == "MODALITY" and len(meta["files"]) == 1
    wait_for(lambda: (svc.queue.root / "status.json").exists(), what="status.json")
    status = json.loads((svc.queue.root / "status.json").read_text())
    assert status["ae_title"] == "FRACFL" and set(status["queue"]) == {"incoming", "processing", "outbox", "failed"}


@needs_dcmtk
def test_store_from_dcmtk_storescu(service):
    svc = service(allowed_peers=[PeerConfig(ae_title="DCMTK")])
    done = subprocess.run([str(DCMTK_STORESCU), "-aet", "DCMTK", "-aec", "FRACFL", "127.0.0.1", str(svc.port), str(RG3)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: svc.queue.count("outbox") == 1, what="results of the dcmtk upload")
    assert journal(svc.queue.root)[0]["calling_ae"] == "DCMTK"


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
    done = subprocess.run(["/usr/bin/echoscu", "-aet", "INTRUDER", "-aec", "FRACFL", "127.0.0.1", str(svc.port)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Association Rejected" in done.stdout + done.stderr


def test_bad_objects_do_not_stop_the_service(service, tmp_path):
    """A non-radiograph is quarantined with its reason; an object the processor crashes on is retried, then parked."""
    crash_on = dcmread(RG3, stop_before_pixels=True).SOPInstanceUID
    inner = DerivedCopy(tmp_path / "results")

    def flaky(path: Path):
        if dcmread(path, stop_before_pixels=True).SOPInstanceUID == crash_on:
            raise MemoryError("decoder blew up")
        return inner(path)

    svc = service(flaky, max_attempts=2)
    ae = scu("MODALITY", Verification, ComputedRadiographyImageStorage, RTPlanStorage)
    assoc = ae.associate("127.0.0.1", svc.port, ae_title="FRACFL")
    for f in (get_testdata_file("rtplan.dcm"), RG3, RG1):
        assert assoc.send_c_store(f).Status == 0x0000
    assoc.release()
    wait_for(lambda: svc.queue.count("failed") == 2 and svc.queue.count("outbox") == 1, timeout=30, what="outcomes")
    reasons = sorted((p / "reason.txt").read_text() for p in svc.queue.dir("failed").iterdir())
    assert reasons[0].startswith("gave up after 2 attempts: processing error MemoryError")
    assert "decoder blew up" in reasons[0]  # the traceback is kept beside the object
    assert reasons[1].startswith("quarantined: not a radiograph (modality RTPLAN)")
    events = Counter(row["event"] for row in journal(svc.queue.root))
    assert events == {"received": 3, "processed": 1, "retry": 1, "failed": 2}
    # Still serving.
    assoc = scu().associate("127.0.0.1", svc.port, ae_title="FRACFL")
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


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
        ListenerService(ListenConfig(allowed_peers=[PeerConfig(host="pacs.example")]), DerivedCopy(Path("/nonexistent")))


@needs_orthanc
def test_outbox_survives_an_unreachable_pacs(tmp_path):
    """Results wait in outbox/ while the PACS is down and are delivered once it is up (and only then removed)."""
    lport = free_port()
    pacs = Orthanc(tmp_path / "orthanc", "FRACFL", lport, route=False)
    cfg = ListenConfig(host="127.0.0.1", port=lport, queue_dir=str(tmp_path / "queue"), retry_delay=0.2,
                       max_retry_delay=0.5, send_timeout=5,
                       destination=DestinationConfig(ORTHANC_AE, "127.0.0.1", pacs.dicom_port))
    svc = ListenerService(cfg, DerivedCopy(tmp_path / "results"))
    svc.start()
    try:
        assoc = scu().associate("127.0.0.1", lport, ae_title="FRACFL")
        assert assoc.send_c_store(RG3).Status == 0x0000
        assoc.release()
        wait_for(lambda: any(r["event"] == "send_retry" for r in journal(svc.queue.root)), what="a failed send")
        assert svc.queue.count("outbox") == 1
        with pacs:
            wait_for(lambda: svc.queue.count("outbox") == 0, what="delivery after the PACS came up")
            stored = [pacs.tags(i) for i in pacs.instances()]
        assert len(stored) == 1 and stored[0]["SOPInstanceUID"] != dcmread(RG3, stop_before_pixels=True).SOPInstanceUID
        assert [r["event"] for r in journal(svc.queue.root)][-1] == "sent"
    finally:
        svc.stop(timeout=10)


# -- with the real DICOM pipeline -------------------------------------------------------------------------------------
GSPS, SC = "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.7"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


def _have_pipeline() -> bool:
    try:
        return importlib.util.find_spec("client.dicom.pipeline") is not None
    except ModuleNotFoundError:
        return False


needs_pipeline = pytest.mark.skipif(not _have_pipeline(),
                                    reason="the DICOM pipeline (client/dicom/pipeline.py) is not in this checkout")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from common.nn.model import ModelSpec, build_model
    from common.nn.weights import save_weights

    spec = ModelSpec(width=0.125, depth=0.5)
    return save_weights(build_model(spec), spec, tmp_path_factory.mktemp("model") / "tiny.safetensors", {"imgsz": 128})


@pytest.fixture(scope="module")
def synthetic_dx(tmp_path_factory) -> list[tuple[Path, str]]:
    """Synthetic DX files with made-up identities: (path, patient name) pairs."""
    import csv

    from common.synth import generate_dataset

    out = tmp_path_factory.mktemp("dx") / "site"
    generate_dataset(out, ["general_hospital"], images_per_site=4, size=128, seed=3, dicom=True, progress=False)
    with open(out / "meta.csv") as f:
        return [(out / "general_hospital" / row["dicom"], row["dicom_patient_name"]) for row in csv.DictReader(f)]


def results_by_source(pacs: Orthanc) -> dict[str, list[dict]]:
    """Objects the listener stored in Orthanc, grouped by the SOP Instance UID they reference."""
    grouped: dict[str, list[dict]] = {}
    for _, tags in pacs.received_from("FRACFL"):
        for uid in referenced_uids(tags):
            grouped.setdefault(uid, []).append(tags)
    return grouped


def check_results(grouped: dict[str, list[dict]], source: Path) -> None:
    src = dcmread(source, stop_before_pixels=True)
    results = grouped.get(src.SOPInstanceUID, [])
    classes = sorted(t["SOPClassUID"] for t in results)
    assert len(classes) == 3 and classes[0] == GSPS and classes[1] == SC and classes[2].startswith(SR_PREFIX), \
        (source.name, classes)  # exactly one of each: processed once
    for tags in results:
        assert tags["StudyInstanceUID"] == src.StudyInstanceUID, (source.name, tags["SOPClassUID"])


@needs_orthanc
@needs_pipeline
def test_orthanc_routes_radiographs_and_receives_gsps_sr_sc(tmp_path, tiny_model, synthetic_dx, caplog):
    """Uploads to a real Orthanc are auto-routed to the listener; the results land in Orthanc, referencing the source."""
    from client.listener.inference import build_processor

    caplog.set_level(logging.DEBUG)
    lport = free_port()
    sources = [RG1, RG3, synthetic_dx[0][0]]
    with Orthanc(tmp_path / "orthanc", "FRACFL", lport) as pacs:
        cfg = ListenConfig(host="127.0.0.1", port=lport, queue_dir=str(tmp_path / "queue"), weights=str(tiny_model),
                           allowed_peers=[PeerConfig(ae_title=ORTHANC_AE, host="127.0.0.1")], threads=1,
                           destination=DestinationConfig(ORTHANC_AE, "127.0.0.1", pacs.dicom_port))
        svc = ListenerService(cfg, build_processor(cfg))
        svc.start()
        try:
            for f in sources:
                pacs.upload(f)
            wait_for(lambda: len(list(pacs.received_from("FRACFL"))) >= 9, timeout=90, what="9 result objects")
            grouped = results_by_source(pacs)
        finally:
            svc.stop(timeout=10)
    for f in sources:
        check_results(grouped, f)
    assert svc.queue.count("outbox") == svc.queue.count("failed") == svc.queue.count("incoming") == 0
    logged = caplog.text
    for f in sources:
        ds = dcmread(f, stop_before_pixels=True)
        for value in (str(ds.PatientName), str(ds.PatientID), ds.get("PatientBirthDate"), ds.SOPInstanceUID):
            assert not value or value not in logged, "patient data or UID in the listener's log"


def start_listener(args: list[str], port: int, log: Path) -> subprocess.Popen:
    fracfl = Path(sys.executable).parent / "fracfl"
    proc = subprocess.Popen([str(fracfl), "listen", *args], stdout=open(log, "ab"), stderr=subprocess.STDOUT)
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
@needs_pipeline
def test_killed_listener_loses_nothing_acknowledged(tmp_path, tiny_model, synthetic_dx):
    """SIGKILL `fracfl listen` mid-work, restart it: every acknowledged object is processed once, results arrive."""
    lport = free_port()
    queue, log = tmp_path / "queue", tmp_path / "listen.log"
    sources = [RG1, RG3] + [p for p, _ in synthetic_dx]
    with Orthanc(tmp_path / "orthanc", "FRACFL", lport, route=False) as pacs:
        args = ["host=127.0.0.1", f"port={lport}", f"queue_dir={queue}", f"weights={tiny_model}", "threads=1",
                f"destination.port={pacs.dicom_port}", "retry_delay=0.2", "status_every=1"]
        proc = start_listener(args, lport, log)
        assoc = scu().associate("127.0.0.1", lport, ae_title="FRACFL")
        statuses = [assoc.send_c_store(f).Status for f in sources]
        assoc.release()
        assert statuses == [0x0000] * len(sources)
        wait_for(lambda: any(r["event"] == "processed" for r in journal(queue)), timeout=60, what="first item")
        proc.kill()
        proc.wait()
        before = Counter(r["event"] for r in journal(queue))
        assert before["received"] == len(sources) and before["processed"] < len(sources)  # work was left over

        proc = start_listener(args, lport, log)
        try:
            wait_for(lambda: sum(r["event"] == "sent" for r in journal(queue)) == len(sources), timeout=90,
                     what="results of every acknowledged object")
        finally:
            proc.terminate()  # SIGTERM: graceful stop, exit code 0
            assert proc.wait(30) == 0, log.read_text()[-2000:]
        grouped = results_by_source(pacs)
    for f in sources:
        check_results(grouped, f)
    processed = Counter(r["item"] for r in journal(queue) if r["event"] == "processed")
    assert len(processed) <= len(sources) and max(processed.values()) == 1
    assert "recovered queue after restart" in log.read_text()
