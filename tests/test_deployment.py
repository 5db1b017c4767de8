"""Flower's real deployment runtime, offline: a SuperLink over TLS with SuperNode authentication, two hospital
SuperNodes serving their own data, and `flwr run` of fracfl's apps; plus proof that TLS and authentication are on.

The deployment follows docs/deployment.md: its marked command blocks run as written (tests/guide_commands.py), with only
the guide's example hosts, ports, paths and names replaced. Every Flower process gets its own FLWR_HOME in tmp_path (as
if on its own machine) and the loopback interface.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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
from guide_commands import block, commands
from tests_support import free_port, toy_dataset

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
    entry = {name: tuple(scripts[name].split(":")) for name in NEEDED}
    for name, (module, func) in {**entry, "fracfl": ("common.cli", "main")}.items():  # fracfl: this source tree's
        (folder / name).write_text(
            f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\nfrom {module} import {func}\n"
            f"sys.exit({func}())\n"
        )
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

    def cli(self, *args: str, ok: bool = True) -> str:
        """`flwr ARGS` as the coordinator, from the source tree; its output (with its errors when `ok` is False)."""
        done = subprocess.run(
            [str(self.bin / "flwr"), *args],
            env=self.env("coordinator"),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert (done.returncode == 0) == ok, f"flwr {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout if ok else done.stdout + done.stderr

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


GUIDE_LINK = "fl.example-hospital.org:8000"  # the guide's SuperLink address
GUIDE_NODE_ID = "12306039689261887294"  # the guide's example node id


def _follow(flower: Flower, cmd: list[str]) -> str:
    """One of the guide's one-shot commands: `fracfl ...` in this process, `flwr ...` as the coordinator."""
    if cmd[0] == "fracfl":
        assert main(cmd[1:]) == 0, cmd
        return ""
    if cmd[0] == "cp":
        shutil.copy(cmd[1], cmd[2])
        return ""
    assert cmd[0] == "flwr", f"the guide's {cmd[0]} is not run by this test: extend _follow"
    return flower.cli(*cmd[1:])


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _runs(p: psutil.Process, program: str) -> bool:
    """Whether `p` is a live process of `program` (one of the launchers in Flower.bin)."""
    try:
        return any(Path(part).name == program for part in p.cmdline()[:2])
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


@pytest.mark.slow
@pytest.mark.timeout(900)  # 180-300 s on the shared 2 cores (load average 3 to 8), a minute of it the crashed site
def test_tls_deployment_trains_resumes_publishes_and_refuses_outsiders(flower, tmp_path):
    tls, keydir = tmp_path / "certs", tmp_path / "keys"
    operators, publisher, approval = tmp_path / "operators", tmp_path / "publisher", tmp_path / "approval.json"
    for cmd in [
        *commands("certs", {"/etc/fracfl/tls": str(tls)}),
        *commands("operator-cert", {"/etc/fracfl/operators": str(operators)}),
        *commands(  # the publisher signs the source tree every `flwr run` below sends
            "publisher",
            {
                "/etc/fracfl/publisher": str(publisher),
                "/srv/fracfl-0.1.0": str(REPO),
                "fracfl-0.1.0.approval.json": str(approval),
            },
        ),
    ]:
        _follow(flower, cmd)
    certs = {"ca": tls / "ca.pem"}
    foreign_ca = make_superlink_certs(tmp_path / "foreign", ["localhost"])["ca"]
    intruder = make_node_key(keydir, "intruder")
    data = {site: toy_dataset(tmp_path / "hospitals" / site, n=8, positives=6, seed=i) for i, site in enumerate(SITES)}
    own = {site: tmp_path / "hospitals" / site / "fracfl" for site in SITES}  # each site's site.toml and ledger
    for site in SITES:  # on each site's machine
        for cmd in [
            *commands("node-key", {"/etc/fracfl/node": str(keydir), "st_marys": site}),
            *commands("site-init", {"/var/lib/fracfl/site": str(own[site])}),
            *commands("app-gate", {"/var/lib/fracfl/site": str(own[site])}),
            *commands(
                "approve-app",
                {
                    "study.pub": str(publisher / "study.pub"),
                    "/var/lib/fracfl/site": str(own[site]),
                    "fracfl-0.1.0.approval.json": str(approval),
                },
            ),
        ]:
            _follow(flower, cmd)
    port, link, tunnel = free_port(), free_port(), free_port()  # the public port (the proxy's), the SuperLink's
    [superlink] = commands(
        "superlink",
        {
            "/etc/fracfl/tls": str(tls),
            "--port 8001": f"--port {link}",
            "/var/lib/fracfl/superlink.db": ":flwr-in-memory:",  # see docs/deployment.md on --database
        },
    )
    flower.start("superlink", *superlink)
    _wait(lambda: "Uvicorn running" in flower.log("superlink"), "the SuperLink to start", flower, 120)
    [proxy] = commands(
        "control-proxy",
        {
            "0.0.0.0:8000": f"127.0.0.1:{port}",
            "127.0.0.1:8001": f"127.0.0.1:{link}",
            "/etc/fracfl/tls": str(tls),
            "/etc/fracfl/operators": str(operators),
        },
    )
    flower.start("proxy", *proxy)
    _wait(lambda: _listening(port), "the control proxy to start", flower, 120)

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
    [operator_tunnel] = commands(
        "operator-tunnel", {GUIDE_LINK: f"localhost:{port}", "/etc/fracfl/tls": str(tls), "~/.fracfl": str(operators)}
    )
    flower.start("tunnel", *operator_tunnel, "--listen", f"127.0.0.1:{tunnel}")  # the guide's default port may be taken
    _wait(lambda: _listening(tunnel), "the operator's tunnel to start", flower, 120)
    connection = block("flwr-connection", {"127.0.0.1:9093": f"127.0.0.1:{tunnel}"})
    (home / "config.toml").write_text(f'[superlink]\ndefault = "hospitals"\n\n{connection}')

    def register(site: str) -> str:  # the coordinator registers each site's public key; returns its node id
        pub = {"st_marys.pub": str(keydir / f"{site}.pub"), "st_marys": site}
        printed = [_follow(flower, cmd) for cmd in commands("register", pub)]
        return re.search(r"SuperNode (\d+) registered", printed[0]).group(1)

    with ThreadPoolExecutor(len(SITES)) as pool:
        node_ids = dict(zip(SITES, pool.map(register, SITES), strict=True))

    def supernode(site: str) -> list[str]:
        [cmd] = commands(
            "supernode",
            {
                GUIDE_LINK: f"127.0.0.1:{port}",
                "/etc/fracfl/tls": str(tls),
                "/etc/fracfl/node": str(keydir),
                "st_marys": site,
                "/data/fx": str(data[site]),
                "/var/lib/fracfl/site": str(own[site]),
            },
        )
        return [*cmd, "--port", str(free_port())]  # two SuperNodes on one machine need different --ports (the guide)

    for site in SITES:
        flower.start(site, *supernode(site))
    # A SuperNode that trusts another CA (with a registered key), and one whose key was never registered.
    node = ["flower-supernode", "--superlink", f"127.0.0.1:{port}"]
    outsiders = {"wrong_ca": (foreign_ca, keydir / f"{SITES[0]}.key"), "intruder": (certs["ca"], intruder["key"])}
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
    status = lambda rid: json.loads(flower.cli("ls", "--run-id", str(rid), "--format", "json"))["runs"][0]
    _wait(lambda: status(sim["run-id"])["status"].startswith("finished"), "the simulate=true run to end", flower, 300)
    assert status(sim["run-id"])["status"] == "finished:failed"
    assert "2 of 2 SuperNodes are real sites" in status(sim["run-id"])["status-details"]
    assert all(s in status(sim["run-id"])["status-details"] for s in SITES)
    assert not run.exists()  # no synthetic sites, records or registry

    # A site asks for the first version the run below will publish (the guide's request, answered after the run).
    asking = {"/var/lib/fracfl/site": str(own[SITES[0]])}
    request, fetch = commands("site-request", asking)
    _follow(flower, request)

    # The guide's tiny DP run.
    (tmp_path / "smoke.toml").write_text(block("smoke-toml", {"/srv/fracfl/runs/smoke": str(run)}))
    [start] = commands("smoke-run", {"/srv/fracfl/smoke.toml": str(tmp_path / "smoke.toml")})
    assert "Successfully started run" in _follow(flower, start)
    pointer = run / "checkpoint" / "checkpoint.json"
    _wait(lambda: pointer.is_file() and json.loads(pointer.read_text())["round"] >= 1, "round 1", flower, 400)
    server_app = [
        p for p in psutil.Process(flower.procs["superlink"].pid).children(recursive=True) if _runs(p, "flwr-serverapp")
    ]
    assert len(server_app) == 1
    server_app[0].kill()  # the deployed server dies mid-run; the same `flwr run` again resumes it
    assert not (run / "outcome.json").exists(), "the run finished before it could be killed"

    # One site's SuperNode crashes too (its process, not its `fracfl site supernode`). Nothing it started outlives
    # the wrapper; restarted at once (as systemd would), it is refused until the SuperLink lets its old session
    # expire, retried and let in.
    crashed = SITES[1]
    wrapper = flower.procs[crashed]
    below = psutil.Process(wrapper.pid).children(recursive=True)
    [crashing] = [p for p in below if _runs(p, "flower-supernode")]
    assert any(_runs(p, "flower-superexec") for p in below)
    crashing.kill()
    assert wrapper.wait(timeout=60) == 128 + signal.SIGKILL
    assert not [p for p in below if _alive(p)], "processes outlived their SuperNode"
    restarted = f"{crashed}-restarted"
    flower.start(restarted, *supernode(crashed))
    _wait(lambda: "SuperNode ID" in flower.log(restarted), "the restarted site to be let in", flower, 240)
    assert "Failed to activate SuperNode" in flower.log(restarted)
    assert "Retrying in" in flower.log(restarted)

    resumed = re.search(r"Successfully started run (\d+)", _follow(flower, start)).group(1)
    [ask] = commands("run-status", {"RUN_ID": resumed})
    _wait(lambda: (run / "outcome.json").is_file(), "the resumed run to finish", flower, 400)
    _wait(lambda: json.loads(_follow(flower, ask))["runs"][0]["status"].startswith("finished"), "", flower, 60)
    assert json.loads(_follow(flower, ask))["runs"][0]["status"] == "finished:completed"

    # The requested version came over the federation's channel into that site's inbox, hashes checked; the site
    # installs it. The other site asked for nothing and got nothing.
    outcome = json.loads((run / "outcome.json").read_text())
    assert outcome["delivered"] == {SITES[0]: {"v0001": "stored"}}
    _follow(flower, fetch)
    assert (own[SITES[0]] / "models" / "versions" / "v0001" / "card.json").is_file()
    assert not (own[SITES[1]] / "models" / "inbox").exists()

    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    trained = [(r["round"], r["site"]) for r in records if r["phase"] == "train"]
    assert sorted(trained) == [(rnd, s) for rnd in (1, 2) for s in sorted(SITES)]  # each round once per site
    cards = [json.loads(c.read_text()) for c in sorted((run / "registry").glob("v*/card.json"))]
    assert [c["round"] for c in cards] == [1, 2] and cards[1]["parent"] == cards[0]["version"]
    assert {s["name"]: s["status"] for s in cards[1]["sites"]} == {s: "trained" for s in SITES}
    assert all(s["examples"] == 10 for s in cards[1]["sites"])  # 6 training images each, sent rounded to 10
    assert main(["registry", "verify", "all", "--registry", str(run / "registry")]) == 0
    assert {s: p["noise"] for s, p in cards[1]["privacy"]["sites"].items()} == {s: SECURE for s in SITES}
    ledgers = {s: own[s] / "privacy" / "ledger.jsonl" for s in SITES}  # where each site.toml says
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

    # The coordinator revokes a site's key: its SuperNode is cut off and stops, and the key cannot come back.
    revoked = SITES[0]
    for cmd in commands("revoke", {GUIDE_NODE_ID: node_ids[revoked]}):
        _follow(flower, cmd)
    _wait(lambda: flower.procs[revoked].poll() is not None, "the revoked site to stop", flower, 120)
    assert flower.procs[revoked].returncode == 0
    assert "the SuperLink no longer knows this node" in flower.log(revoked)
    again = flower.cli("supernode", "register", str(keydir / f"{revoked}.pub"), "hospitals", ok=False)
    assert "Public key already in use" in again


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
