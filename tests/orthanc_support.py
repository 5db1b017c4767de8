"""A real Orthanc PACS for tests and benchmarks: the Debian package's binary on loopback with a throw-away store.

Orthanc routes every radiograph it stores (CR/DX/MG, not received from the listener itself) to the listener's AE
with a Lua `OnStoredInstance` hook, as a hospital would configure auto-routing; with `ANNOTATIONS` added to the
routed modalities, radiologists' presentation states, SRs and key object selections go the same way.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests_support import free_port

ORTHANC = Path("/usr/sbin/Orthanc")
DCMTK_STORESCU = Path("/usr/bin/storescu")  # not the venv's pynetdicom `storescu`, which shadows it on PATH
ORTHANC_AE = "ORTHANC"

RADIOGRAPHS = ("CR", "DX", "MG")
ANNOTATIONS = ("PR", "SR", "KO")  # GSPS, structured reports, key object selections
ROUTE_LUA = """
local routed = { {modalities} }
function OnStoredInstance(instanceId, tags, metadata, origin)
  local fromListener = origin['RemoteAet'] == '{listener_ae}'
  if routed[tags['Modality']] and not fromListener then
    SendToModality(instanceId, 'fracfl')
  end
end
"""


class Orthanc:
    """`with Orthanc(tmp, listener_ae, listener_port) as pacs:` a running Orthanc; REST helpers below."""

    def __init__(
        self,
        workdir: Path,
        listener_ae: str,
        listener_port: int,
        route: bool = True,
        modalities: tuple[str, ...] = RADIOGRAPHS,
    ):
        self.workdir = Path(workdir)
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.listener_ae = listener_ae
        self.listener_port = listener_port
        self.route = route
        self.modalities = modalities
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def __enter__(self) -> Orthanc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lua = self.workdir / "route.lua"
        routed = ", ".join(f"{m} = true" for m in self.modalities)
        lua.write_text(ROUTE_LUA.replace("{listener_ae}", self.listener_ae).replace("{modalities}", routed))
        config = {
            "Name": "fracfl-test",
            "StorageDirectory": str(self.workdir / "db"),
            "IndexDirectory": str(self.workdir / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ORTHANC_AE,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "LuaScripts": [str(lua)] if self.route else [],
            "HttpServerEnabled": True,
            "SaveJobs": False,
            "DicomModalities": {"fracfl": [self.listener_ae, "127.0.0.1", self.listener_port]},
            "DicomScuTimeout": 10,
            "StableAge": 1,
        }
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=1))
        self.log = open(self.workdir / "orthanc.log", "wb")
        self.proc = subprocess.Popen([str(ORTHANC), str(cfg)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/system")
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    raise RuntimeError(f"Orthanc did not start; see {self.workdir / 'orthanc.log'}") from None
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    # -- REST --------------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, data: bytes | None = None) -> Any:
        rq = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(rq, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def get(self, path: str) -> Any:
        return self._call("GET", path)

    def upload(self, path: Path) -> str:
        """Store a DICOM file through the REST API (as a modality's upload would); returns Orthanc's instance id."""
        return self._call("POST", "/instances", Path(path).read_bytes())["ID"]

    def instances(self) -> list[str]:
        return self.get("/instances")

    def tags(self, instance: str) -> dict:
        return self.get(f"/instances/{instance}/simplified-tags")

    def received_from(self, ae_title: str) -> Iterator[tuple[str, dict]]:
        """(id, simplified tags) of every instance stored by a C-STORE from `ae_title`."""
        for inst in self.instances():
            rq = urllib.request.Request(f"{self.url}/instances/{inst}/metadata/RemoteAET")
            try:
                with urllib.request.urlopen(rq, timeout=30) as r:
                    aet = r.read().decode()
            except OSError:
                continue
            if aet == ae_title:
                yield inst, self.tags(inst)


def referenced_uids(tags: Any) -> set[str]:
    """Every ReferencedSOPInstanceUID anywhere in (nested) simplified tags."""
    found: set[str] = set()
    if isinstance(tags, dict):
        for key, value in tags.items():
            if key == "ReferencedSOPInstanceUID" and isinstance(value, str):
                found.add(value)
            else:
                found |= referenced_uids(value)
    elif isinstance(tags, list):
        for value in tags:
            found |= referenced_uids(value)
    return found


def have_orthanc() -> bool:
    return ORTHANC.is_file() and shutil.which(str(ORTHANC)) is not None


def have_dcmtk() -> bool:
    return DCMTK_STORESCU.is_file()
