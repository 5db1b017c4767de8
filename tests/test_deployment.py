"""Flower's real deployment runtime, offline: a SuperLink over TLS with SuperNode authentication, two hospital
SuperNodes serving their own data, and `flwr run` of fracfl's apps; plus proof that TLS and authentication are on.

Every Flower process gets its own FLWR_HOME in tmp_path (as if on its own machine) and the loopback interface.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection, HTTPException
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import psutil
import pytest
from tests_support import free_port, toy_dataset

from client.site_config import write_site_config
from common.cli import main
from common.errors import ConfigError
from common.privacy.ledger import SECURE, Ledger
from server.deploy.certs import make_node_key, make_superlink_certs

REPO = Path(__file__).resolve().parents[1]
SITES = ("st_marys", "county_general")
NEEDED = (
    "flower-superlink",
    "flower-supernode",
    "flower-superexec",
    "flwr-serverapp",
    "flwr-clientapp",
    "flwr-simulation",
    "flwr",
)
OFFLINE = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
JOB = (
    "model=yolov7_nano federation.sites=2 federation.min_sites=2 federation.rounds=2 federation.fraction_evaluate=0 "
    "tracking=disabled train.imgsz=64 train.batch_size=8 train.local_epochs=1 augment=none progress=false "
    "export.enabled=false"
)  # sites train only: their evaluation is the same message path, tested in simulations


def _flower_bin(folder: Path) -> Path:
    """Launchers of Flower's console scripts for this interpreter. The SuperLink and SuperNodes start
    `flower-superexec`, `flwr-serverapp`, `flwr-clientapp` and `flwr-simulation` from PATH, and those must be this
    environment's."""
    try:
        scripts = {ep.name: ep.value for ep in distribution("flwr").entry_points if ep.group == "console_scripts"}
    except PackageNotFoundError:
        pytest.skip("flwr is not installed")
    missing = [n for n in NEEDED if n not in scripts]
    if missing:
        pytest.skip(f"this Flower installation has no {', '.join(missing)}")
    folder.mkdir()
    for name in NEEDED:
        module, func = scripts[name].split(":")
        (folder / name).write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
        (folder / name).chmod(0o755)
    return folder


class Flower:
    """The processes of one deployment; `stop` ends each one and everything it started."""

    def __init__(self, root: Path):
        self.root, self.bin = root, _flower_bin(root / "bin")
        self.procs: dict[str, subprocess.Popen] = {}
        self.files: list = []

    def env(self, name: str) -> dict[str, str]:
        return {
            **os.environ,
            **OFFLINE,
            "FLWR_HOME": str(self.root / "home" / name),
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("w")
        self.files.append(log)
        self.procs[name] = subprocess.Popen(
            [str(self.bin / args[0]), *args[1:]],
            env=self.env(name),
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.procs[name]

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [str(self.bin / "flwr"), *args],
            env=self.env("coordinator"),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"flwr {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {n} (exit {p.poll()})\n{self.log(n)[-3000:]}" for n, p in self.procs.items())

    def stop(self) -> None:
        for p in reversed(self.procs.values()):  # sites first, the SuperLink last; each stops what it started
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        for f in self.files:
            f.close()
        # Whatever is left (e.g. the SuperExec of a SuperNode that gave up) runs one of this test's launchers.
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(self.bin) in part for part in proc.info["cmdline"] or ()):
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass


@pytest.fixture
def flower(tmp_path):
    f = Flower(tmp_path)
    try:
        yield f
    finally:
        f.stop()


def _wait(cond, what: str, flower: Flower, timeout: float) -> None:
    deadline = time.time() + timeout
    while not cond():
        link = flower.procs.get("superlink")
        assert link is None or link.poll() is None, f"the SuperLink died\n{flower.logs()}"
        assert time.time() < deadline, f"timed out waiting for {what}\n{flower.logs()}"
        time.sleep(0.5)


def _tls_handshake(port: int, ca: Path) -> dict:
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.getpeercert()


def test_certificates_and_node_keys_are_what_flower_accepts(tmp_path, capsys):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    assert main(["deploy", "certs", str(tmp_path / "tls"), "--host", "fl.example.org", "--host", "10.0.0.5"]) == 0
    ca = x509.load_pem_x509_certificate((tmp_path / "tls" / "ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "tls" / "superlink.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"fl.example.org", "localhost"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"10.0.0.5", "127.0.0.1"}
    assert all((tmp_path / "tls" / k).stat().st_mode & 0o077 == 0 for k in ("ca.key", "superlink.key"))
    before = (tmp_path / "tls" / "ca.key").read_bytes()
    assert main(["deploy", "certs", str(tmp_path / "tls")]) == 2  # never overwrites a key
    assert "ca.key" in capsys.readouterr().err and (tmp_path / "tls" / "ca.key").read_bytes() == before

    files = make_node_key(tmp_path / "keys", "st_marys")
    assert files["key"].stat().st_mode & 0o077 == 0
    private = load_ssh_private_key(files["key"].read_bytes(), None)  # as flower-supernode reads it
    assert try_load_public_key(files["pub"]) == public_key_to_bytes(private.public_key())  # as `flwr` reads it
    with pytest.raises(ConfigError, match="plain file name"):
        make_node_key(tmp_path / "keys", "../elsewhere")


@pytest.mark.slow
@pytest.mark.timeout(900)  # 120-230 s on the shared 2 cores (load average 3 to 8)
def test_tls_deployment_trains_resumes_publishes_and_refuses_outsiders(flower, tmp_path):
    certs = make_superlink_certs(tmp_path / "certs", ["localhost"])
    foreign_ca = make_superlink_certs(tmp_path / "foreign", ["localhost"])["ca"]
    keys = {name: make_node_key(tmp_path / "keys", name) for name in (*SITES, "intruder")}
    data = {site: toy_dataset(tmp_path / "hospitals" / site, n=8, positives=6, seed=i) for i, site in enumerate(SITES)}
    own = {site: write_site_config(tmp_path / "hospitals" / site / "fracfl") for site in SITES}  # `fracfl site init`
    port = free_port()
    flower.start(
        "superlink",
        "flower-superlink",
        "--ssl-ca-certfile",
        str(certs["ca"]),
        "--ssl-certfile",
        str(certs["cert"]),
        "--ssl-keyfile",
        str(certs["key"]),
        "--port",
        str(port),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
    )  # state in memory: see docs/deployment.md on --database
    _wait(lambda: "Uvicorn running" in flower.log("superlink"), "the SuperLink to start", flower, 120)

    # TLS is on: the certificate verifies against our CA for `localhost`, not against another CA, and plain HTTP
    # gets no answer.
    assert ("DNS", "localhost") in _tls_handshake(port, certs["ca"])["subjectAltName"]
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_handshake(port, foreign_ca)
    plain = HTTPConnection("127.0.0.1", port, timeout=10)
    with pytest.raises((OSError, HTTPException)):  # closed, or a TLS alert that is no HTTP status line
        plain.request("GET", "/")
        plain.getresponse()

    home = tmp_path / "home" / "coordinator"
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "hospitals"\n\n[superlink.hospitals]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{certs["ca"]}"\n'
    )
    with ThreadPoolExecutor(len(SITES)) as pool:  # the coordinator registers each site's public key
        list(
            pool.map(
                lambda s: flower.cli("supernode", "register", str(keys[s]["pub"]), "hospitals", "--name", s), SITES
            )
        )
    node = ["flower-supernode", "--superlink", f"127.0.0.1:{port}"]
    for site in SITES:
        flower.start(
            site,
            *node,
            "--root-certificates",
            str(certs["ca"]),
            "--auth-supernode-private-key",
            str(keys[site]["key"]),
            "--port",
            str(free_port()),
            "--node-config",
            f"site-name='{site}' data-dir='{data[site]}' site-config='{own[site]}'",
        )
    # A SuperNode that trusts another CA (with a registered key), and one whose key was never registered.
    outsiders = {"wrong_ca": (foreign_ca, keys[SITES[0]]["key"]), "intruder": (certs["ca"], keys["intruder"]["key"])}
    for name, (ca, key) in outsiders.items():
        flower.start(
            name,
            *node,
            "--root-certificates",
            str(ca),
            "--auth-supernode-private-key",
            str(key),
            "--port",
            str(free_port()),
            "--max-retries",
            "0",
            "--node-config",
            f"site-name='{name}' data-dir='{tmp_path}'",
        )

    online = lambda: (
        sum(n["status"] == "online" for n in json.loads(flower.cli("supernode", "ls", "--format", "json"))["nodes"])
        == len(SITES)
    )
    _wait(online, "both sites' SuperNodes to connect", flower, 120)

    # `flwr run` with the default `simulate = true` against real sites is refused before anything is built.
    run = tmp_path / "run"
    (tmp_path / "sim.toml").write_text(f'overrides = "{JOB} run_id=simulated run_dir={run}"\n')
    sim = json.loads(
        flower.cli("run", str(REPO), "hospitals", "--run-config", str(tmp_path / "sim.toml"), "--format", "json")
    )
    status = lambda: json.loads(flower.cli("ls", "--run-id", str(sim["run-id"]), "--format", "json"))["runs"][0]
    _wait(lambda: status()["status"].startswith("finished"), "the simulate=true run to end", flower, 300)
    assert status()["status"] == "finished:failed"
    assert "2 of 2 SuperNodes are real sites" in status()["status-details"]
    assert all(s in status()["status-details"] for s in SITES)
    assert not run.exists()  # no synthetic sites, records or registry

    (tmp_path / "job.toml").write_text(
        f'simulate = false\noverrides = "{JOB} privacy=dp_sgd run_id=deployed run_dir={run}"\n'
    )
    start = ["run", str(REPO), "hospitals", "--run-config", str(tmp_path / "job.toml"), "--format", "json"]
    assert json.loads(flower.cli(*start))["success"]
    pointer = run / "checkpoint" / "checkpoint.json"
    _wait(lambda: pointer.is_file() and json.loads(pointer.read_text())["round"] >= 1, "round 1", flower, 400)
    server_app = [
        p
        for p in psutil.Process(flower.procs["superlink"].pid).children(recursive=True)
        if "flwr-serverapp" in " ".join(p.cmdline())
    ]
    assert len(server_app) == 1
    server_app[0].kill()  # the deployed server dies mid-run; the same `flwr run` again resumes it
    assert not (run / "outcome.json").exists(), "the run finished before it could be killed"
    assert json.loads(flower.cli(*start))["success"]
    _wait(lambda: (run / "outcome.json").is_file(), "the resumed run to finish", flower, 400)

    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    trained = [(r["round"], r["site"]) for r in records if r["phase"] == "train"]
    assert sorted(trained) == [(rnd, s) for rnd in (1, 2) for s in sorted(SITES)]  # each round once per site
    cards = [json.loads(c.read_text()) for c in sorted((run / "registry").glob("v*/card.json"))]
    assert [c["round"] for c in cards] == [1, 2] and cards[1]["parent"] == cards[0]["version"]
    assert {s["name"]: s["status"] for s in cards[1]["sites"]} == {s: "trained" for s in SITES}
    assert all(s["examples"] == 10 for s in cards[1]["sites"])  # 6 training images each, sent rounded to 10
    assert main(["registry", "verify", "all", "--registry", str(run / "registry")]) == 0
    assert {s: p["noise"] for s, p in cards[1]["privacy"]["sites"].items()} == {s: SECURE for s in SITES}
    ledgers = {s: own[s].parent / "privacy" / "ledger.jsonl" for s in SITES}  # where each site.toml says
    spent = {s: [e for e in Ledger(ledgers[s]).entries() if e["kind"] == "round"] for s in SITES}
    assert all(len(rounds) == 2 for rounds in spent.values())

    # A run that asks for a higher ceiling and another ledger folder is refused at both sites (issue 18.1).
    greedy, elsewhere = tmp_path / "greedy", tmp_path / "fresh-ledgers"
    (tmp_path / "greedy.toml").write_text(
        f'simulate = false\noverrides = "{JOB} privacy=dp_sgd privacy.ceiling_epsilon=20 '
        f'privacy.ledger_dir={elsewhere} federation.rounds=1 run_id=greedy run_dir={greedy}"\n'
    )
    assert json.loads(
        flower.cli("run", str(REPO), "hospitals", "--run-config", str(tmp_path / "greedy.toml"), "--format", "json")
    )["success"]
    _wait(lambda: (greedy / "outcome.json").is_file(), "the greedy run to finish", flower, 300)
    statuses = {
        r["site"]: r["status"]
        for r in map(json.loads, (greedy / "records.jsonl").read_text().splitlines())
        if r["phase"] == "train"
    }
    assert set(statuses) == set(SITES)
    for status in statuses.values():
        assert status.startswith("refused: the run asks for ceiling_epsilon 20.00 above this site's 10.00")
        assert "another ledger folder" in status
    assert not elsewhere.exists()
    assert all(Ledger(ledgers[s]).entries()[-1]["hash"] == spent[s][-1]["hash"] for s in SITES)  # nothing spent

    for name in outsiders:
        _wait(lambda name=name: flower.procs[name].poll() is not None, f"{name} to give up", flower, 120)
        assert flower.procs[name].returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in flower.log("wrong_ca")
    assert "Failed to activate SuperNode" in flower.log("intruder")
    for site in SITES:  # a site's node config (its data folder) never reaches the SuperLink
        assert str(data[site]) not in flower.log("superlink")


@pytest.mark.slow
@pytest.mark.timeout(600)  # about a minute on 2 cores
def test_flwr_run_on_an_offline_simulation_superlink(flower, tmp_path):
    """The documented offline `flwr run .` path (docs/federated.md): a simulation SuperLink, the default
    `simulate = true`; the ServerApp finds virtual nodes (not real sites), builds the sites, trains and publishes."""
    port = free_port()
    flower.start(
        "superlink",
        "flower-superlink",
        "--simulation",
        "--insecure",
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    )
    home = tmp_path / "home" / "coordinator"
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "localsim"\n\n[superlink.localsim]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    run = tmp_path / "run"
    (tmp_path / "sim.toml").write_text(
        f'overrides = "{JOB} partition.images_per_site=8 partition.size=96 run_id=localsim run_dir={run}"\n'
    )
    _wait(lambda: _listening(port), "the SuperLink to start", flower, 120)
    started = json.loads(
        flower.cli(
            "run",
            str(REPO),
            "localsim",
            "--run-config",
            str(tmp_path / "sim.toml"),
            "--federation-config",
            "num-supernodes=2",
            "--format",
            "json",
        )
    )
    status = lambda: json.loads(flower.cli("ls", "--run-id", str(started["run-id"]), "--format", "json"))["runs"][0]
    _wait(lambda: status()["status"].startswith("finished"), "the simulation to end", flower, 500)
    assert status()["status"] == "finished:completed", status()
    assert len(json.loads((run / "sites.json").read_text())) == 2  # the sites were built by the ServerApp
    cards = [json.loads(c.read_text()) for c in sorted((run / "registry").glob("v*/card.json"))]
    assert [c["round"] for c in cards] == [1, 2]
    assert all(s["status"] == "trained" for s in cards[1]["sites"]) and len(cards[1]["sites"]) == 2
    assert cards[1]["metrics"]["pooled"] is not None  # scored on the simulation's pooled validation set


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
