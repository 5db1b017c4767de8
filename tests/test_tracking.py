"""Tracking: offline runs land in run_dir/wandb, no patient data reaches any file, nothing leaves the machine."""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from common.errors import ConfigError
from server.tracking import DisabledTracker, make_tracker, sanitize_config, sanitize_metrics, sanitize_summary

PATIENT = "DOE^JANE"
PATIENT_BYTES = [PATIENT.encode(), b"DOE", b"JANE"]
CONFIG = {
    "data": {"path": f"/data/{PATIENT}/site.yaml", "note": f"patient {PATIENT}", "imgsz": [640, 640]},
    "train": {"lr": 0.01, "epochs": 2, "amp": True, "device": "cpu", "sites": ["general_hospital", "rural_clinic"]},
    "seed": 0,
}


def all_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()]


def test_sanitize_rules():
    cfg, dropped = sanitize_config(CONFIG)
    assert cfg == {
        "data.path": "site.yaml",
        "data.imgsz": [640, 640],
        "train.lr": 0.01,
        "train.epochs": 2,
        "train.amp": True,
        "train.device": "cpu",
        "train.sites": ["general_hospital", "rural_clinic"],
        "seed": 0,
    }
    assert dropped == ["config 'data.note' (str value not allowed)"]
    assert sanitize_config(
        {
            "w": "C:\\scans\\site_b\\data.yaml",
            "p": Path("/x/y.pt"),
            "n": None,
            "mixed": [1, "a b"],
            "bad key!": 1,
            "empty": "",
            "none": [],
        }
    )[0] == {"w": "data.yaml", "p": "y.pt", "empty": "", "none": []}

    kept, dropped = sanitize_metrics(
        {
            "a/map50": np.float32(0.5),
            "b": 3,
            "c": float("inf"),
            "d": PATIENT,
            "e": np.nan,
            f"site/{PATIENT}/map50": 0.3,
            "f": True,
        }
    )
    assert kept == {"a/map50": 0.5, "b": 3, "f": 1}
    assert len(dropped) == 4 and not any(PATIENT in d for d in dropped)  # warnings never quote the value or key

    kept, dropped = sanitize_summary(
        {"best_site": "trauma_center", "who": f"{PATIENT}", "note": "two words", "best_map50": 0.4}
    )
    assert kept == {"best_site": "trauma_center", "best_map50": 0.4}
    assert len(dropped) == 2 and not any(PATIENT in d for d in dropped)


def test_bad_mode_and_names(tmp_path):
    with pytest.raises(ConfigError, match=r"tracking\.mode.*offline, online, disabled"):
        make_tracker("cloud", tmp_path, "fracfl", "r1", {})
    with pytest.raises(ConfigError, match=r"tracking\.run_name"):
        make_tracker("offline", tmp_path, "fracfl", f"run {PATIENT}", {})
    with pytest.raises(ConfigError, match=r"tracking\.project"):
        make_tracker("offline", tmp_path, "a/b", "r1", {})
    assert not any(tmp_path.iterdir())


def test_disabled_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    with make_tracker("disabled", run_dir, "fracfl", "r1", CONFIG) as t:
        assert isinstance(t, DisabledTracker)
        t.log(0, {"map50": 0.1})
        t.summary({"best_round": 0})
    assert not run_dir.exists()


class SocketGuard:
    """Refuses and records every connection or DNS look-up that is not loopback or a Unix socket."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.attempts: list[object] = []
        real_connect, real_connect_ex, real_gai = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

        def outbound(family: int, address: object) -> bool:
            if family == getattr(socket, "AF_UNIX", None):
                return False
            host = address[0] if isinstance(address, tuple) else address
            if host in ("localhost", "", None):
                return False
            try:
                return not ipaddress.ip_address(str(host).split("%")[0]).is_loopback
            except ValueError:
                return True

        def connect(sock, address):
            if outbound(sock.family, address):
                self.attempts.append(address)
                raise OSError("test guard: outbound connection refused")
            return real_connect(sock, address)

        def connect_ex(sock, address):
            if outbound(sock.family, address):
                self.attempts.append(address)
                return 111
            return real_connect_ex(sock, address)

        def getaddrinfo(host, *args, **kwargs):
            if outbound(socket.AF_INET, (host,)):
                self.attempts.append(("dns", host))
                raise socket.gaierror("test guard: DNS refused")
            return real_gai(host, *args, **kwargs)

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_offline_run_is_local_and_private(tmp_path, monkeypatch, caplog):
    """One offline run: metrics on disk, the patient name nowhere, no outbound connection from Python or wandb-core."""
    wandb = pytest.importorskip("wandb")
    guard = SocketGuard(monkeypatch)
    # wandb-core (a Go process, out of the socket guard's reach) is restarted with every proxy variable pointing at
    # a loopback listener we own: any HTTP(S) request it tried (Sentry, the W&B API, cloud metadata) would land here.
    trap = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    trap.bind(("127.0.0.1", 0))
    trap.listen(8)
    trap.setblocking(False)
    proxy = f"http://127.0.0.1:{trap.getsockname()[1]}"
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, proxy)
    for var in ("NO_PROXY", "no_proxy", "WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "argv", ["fracfl", f"data=/data/{PATIENT}/data.yaml"])  # wandb must not record argv
    wandb.teardown()  # a fresh wandb-core, started with the environment above

    run_dir = tmp_path / "run"
    key = "pooled/map50_probe7f3a"
    try:
        with caplog.at_level(logging.WARNING, logger="fracfl.tracking"):
            with make_tracker("offline", run_dir, "fracfl", "test-run", CONFIG) as t:
                for step in range(3):
                    t.log(
                        step,
                        {
                            key: 0.1 * step,
                            "site/trauma_center/loss": 1.0 / (step + 1),
                            "note": f"patient {PATIENT}",
                            "bad": math.nan,
                        },
                    )
                t.log(1, {key: 0.9})  # going back a step: dropped, wandb would reject it
                t.summary({"best_round": 2, "best_site": "trauma_center", "who": PATIENT})
                offline_run = t.run_dir
        wandb.teardown()
    finally:
        try:
            conn, _ = trap.accept()
            conn.close()
            proxied = True
        except BlockingIOError:
            proxied = False
        trap.close()

    assert guard.attempts == []
    assert not proxied, "wandb tried to reach the network through the proxy"

    assert offline_run.parent == run_dir / "wandb" and offline_run.name.startswith("offline-run-")
    logs = list(offline_run.glob("*.wandb"))
    assert len(logs) == 1
    data = logs[0].read_bytes()
    for text in (key, "site/trauma_center/loss", "best_round", "trauma_center", "site.yaml", "train.lr"):
        assert text.encode() in data, text

    files = all_bytes(run_dir)
    assert files
    for path, content in files:
        for needle in PATIENT_BYTES:
            assert needle not in content, f"{needle!r} leaked into {path}"
    assert not (offline_run / "files" / "output.log").exists()  # console not captured
    assert not (offline_run / "files" / "wandb-metadata.json").exists()  # no host, user, argv
    warned = caplog.text
    assert "'note'" in warned and "'who'" in warned and "'data.note'" in warned and "step 1" in warned
    assert PATIENT not in warned
