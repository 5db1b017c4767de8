"""The whole CLI path (synthesise, train, evaluate) works with outbound network blocked and writes only where told."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

GUARD = textwrap.dedent('''
    """Loaded at interpreter start: every non-loopback network attempt is recorded and refused."""
    import ipaddress, os, socket

    _log = os.environ["FRACFL_NET_LOG"]

    def _refuse(what):
        with open(_log, "a") as f:
            f.write(repr(what) + "\\n")
        raise OSError(101, "network blocked by test: " + repr(what))

    def _local(host):
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host in ("localhost", "")

    _connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            _refuse(("connect", address))
        return _connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _local(str(host)):
            _refuse(("getaddrinfo", host))
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.getaddrinfo = getaddrinfo
''')


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_train_and_evaluate_offline_write_only_their_folders(tmp_path):
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    log = tmp_path / "net.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(guard),
        "FRACFL_NET_LOG": str(log),
        "HOME": str(home),
        "FRACFL_CACHE_DIR": str(tmp_path / "cache"),
    }
    env.pop("MPLCONFIGDIR", None)
    env.pop("YOLO_CONFIG_DIR", None)
    fracfl = [sys.executable, "-m", "common.cli"]

    def run(*args):
        r = subprocess.run([*fracfl, *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    probe = subprocess.run(
        [sys.executable, "-c", "import socket; socket.getaddrinfo('example.org', 80)"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert probe.returncode != 0 and log.read_text()  # the guard is active in child interpreters
    log.unlink()

    run("data", "synth", "data", "--sites", "general_hospital,rural_clinic", "--images", "8", "--size", "96", "--quiet")
    data_files = _files(work / "data")
    run(
        "train",
        "model=yolov7_nano",
        "data.path=data",
        "data.synth=null",
        "train.epochs=1",
        "train.imgsz=64",
        "train.batch_size=4",
        "run_dir=run",
        "progress=false",
    )
    weights = work / "run" / "weights" / "model.safetensors"
    r = run("evaluate", "--model", str(weights), "--data", "data", "--out", "run/eval2", "--quiet")
    assert "mAP50" in r.stdout

    assert not log.exists(), log.read_text()  # no connection or name lookup was attempted
    assert _files(work / "data") == data_files  # no label caches or anything else beside the data
    assert {p.split("/")[0] for p in _files(work)} == {"data", "run"}
    assert not any(home.iterdir())  # nothing in the user's home either
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert metrics["train"]["images"] > 0 and "map50" in metrics["val"]
    assert (work / "run" / "eval" / "pr_curve.png").stat().st_size > 0


def test_flower_telemetry_and_update_check_are_off_unless_asked_for():
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
    code = (
        "import common, flwr.supercore.telemetry as t, os; "
        "print(t.FLWR_TELEMETRY_ENABLED, os.environ['FLWR_DISABLE_UPDATE_CHECK'])"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "1"]
    env["FLWR_TELEMETRY_ENABLED"] = "1"  # an explicit choice is the user's
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]
