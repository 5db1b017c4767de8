"""Issue 18.2 on Flower's real runtime: the SuperLink's Control API answers only operators (mutual TLS through
`fracfl deploy control-proxy` and `operator-tunnel`), and a site runs only app bundles it approved
(`fracfl site app-gate|approve-app`).

One SuperLink on loopback behind the proxy, one SuperNode reaching it through the proxy; runs use the cheap
`simulate = true` path (the ServerApp asks each site one question and ends), which executes the ClientApp at the site.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_deployment import JOB, REPO, Flower, _wait
from tests_support import free_port, toy_dataset

from client.fab_gate import AUDIT
from client.site_config import write_site_config
from common.cli import main
from server.deploy.certs import make_node_key, make_superlink_certs
from server.deploy.control_proxy import Refused, _authorize


class GatedFlower(Flower):
    """Flower's processes, where a site's processes find its gate (`fracfl site app-gate`) first on PATH."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.gates: dict[str, Path] = {}

    def env(self, name: str) -> dict[str, str]:
        env = super().env(name)
        if name in self.gates:
            env["PATH"] = f"{self.gates[name]}{os.pathsep}{env['PATH']}"
        return env


@pytest.fixture
def flower(tmp_path):
    f = GatedFlower(tmp_path)
    try:
        yield f
    finally:
        f.stop()


def _fracfl(flower: Flower, name: str, *args: str) -> None:
    """A long-running `fracfl` service (proxy, tunnel) from this source tree, logged like Flower's processes."""
    log = (flower.root / f"{name}.log").open("w")
    flower.files.append(log)
    flower.procs[name] = subprocess.Popen(
        [sys.executable, "-m", "common.cli", *args],
        env={**flower.env(name), "PYTHONPATH": str(REPO)},
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _flwr(flower: Flower, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(flower.bin / "flwr"), *args],
        env=flower.env("coordinator"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_only_operators_reach_the_control_api_and_sites_run_only_approved_bundles(flower: GatedFlower, tmp_path):
    certs = make_superlink_certs(tmp_path / "certs", ["localhost"])
    assert main(["deploy", "operator-cert", str(tmp_path / "operators"), "--name", "alice"]) == 0
    assert main(["deploy", "publisher-key", str(tmp_path / "publisher"), "--name", "study"]) == 0
    key = make_node_key(tmp_path / "keys", "st_marys")
    data = toy_dataset(tmp_path / "hospital" / "data", n=8, positives=6, seed=0)
    site_dir = tmp_path / "hospital" / "fracfl"
    own = write_site_config(site_dir)  # `fracfl site init`
    assert main(["site", "app-gate", str(site_dir)]) == 0
    (site_dir / "publishers" / "study.pub").write_bytes((tmp_path / "publisher" / "study.pub").read_bytes())

    link, proxy, tunnel = free_port(), free_port(), free_port()
    flower.start(
        "superlink",
        "flower-superlink",
        *("--ssl-ca-certfile", str(certs["ca"]), "--ssl-certfile", str(certs["cert"])),
        *("--ssl-keyfile", str(certs["key"]), "--host", "127.0.0.1", "--port", str(link)),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
    )
    _fracfl(
        flower,
        "proxy",
        *("deploy", "control-proxy", "--listen", f"127.0.0.1:{proxy}", "--superlink", f"127.0.0.1:{link}"),
        *("--certfile", str(certs["cert"]), "--keyfile", str(certs["key"]), "--ca", str(certs["ca"])),
        *("--operator-ca", str(tmp_path / "operators" / "operator-ca.pem")),
    )
    _fracfl(
        flower,
        "tunnel",
        *("deploy", "operator-tunnel", "--proxy", f"localhost:{proxy}", "--ca", str(certs["ca"])),
        *("--cert", str(tmp_path / "operators" / "alice.pem"), "--key", str(tmp_path / "operators" / "alice.key")),
        *("--listen", f"127.0.0.1:{tunnel}"),
    )
    home = tmp_path / "home" / "coordinator"
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "operator"\n\n[superlink.direct]\naddress = "localhost:{proxy}"\n'
        f'root-certificates = "{certs["ca"]}"\n\n[superlink.operator]\naddress = "127.0.0.1:{tunnel}"\n'
        "insecure = true\n"
    )
    _wait(lambda: "listening" in flower.log("proxy") and "listening" in flower.log("tunnel"), "proxy", flower, 60)
    _wait(lambda: "Uvicorn running" in flower.log("superlink"), "the SuperLink to start", flower, 120)

    # Without an operator certificate (only the CA, like any SuperNode): refused, and nothing was registered.
    (tmp_path / "sim.toml").write_text(f'overrides = "{JOB} run_id=q run_dir={tmp_path / "run"}"\n')
    refused = {
        "register": _flwr(flower, "supernode", "register", str(key["pub"]), "direct", "--name", "st_marys"),
        "run": _flwr(flower, "run", str(REPO), "direct", "--run-config", str(tmp_path / "sim.toml")),
        "log": _flwr(flower, "log", "1", "direct", "--show"),
    }
    for what, done in refused.items():
        assert done.returncode != 0, f"unauthenticated flwr {what} was accepted:\n{done.stdout}\n{done.stderr}"
        assert "403" in done.stdout + done.stderr, (what, done.stdout, done.stderr)
    assert flower.log("proxy").count("no operator certificate") >= 3

    # An operator registers the site; its SuperNode reaches the SuperLink through the proxy, gated.
    flower.cli("supernode", "register", str(key["pub"]), "operator", "--name", "st_marys")
    flower.gates["st_marys"] = site_dir / "bin"
    flower.start(
        "st_marys",
        *("flower-supernode", "--superlink", f"localhost:{proxy}", "--root-certificates", str(certs["ca"])),
        *("--auth-supernode-private-key", str(key["key"]), "--port", str(free_port())),
        "--node-config",
        f"site-name='st_marys' data-dir='{data}' site-config='{own}'",
    )
    online = lambda: any(
        n["status"] == "online" for n in json.loads(flower.cli("supernode", "ls", "--format", "json"))["nodes"]
    )
    _wait(online, "the SuperNode to connect through the proxy", flower, 120)

    def query(app: Path) -> dict:
        run = json.loads(
            flower.cli("run", str(app), "operator", "--run-config", str(tmp_path / "sim.toml"), "--format", "json")
        )
        status = lambda: json.loads(flower.cli("ls", "--run-id", str(run["run-id"]), "--format", "json"))["runs"][0]
        _wait(lambda: status()["status"].startswith("finished"), f"run {run['run-id']} to end", flower, 300)
        return {"run-id": run["run-id"], **status()}

    # A modified bundle (one line added to the ClientApp) is refused at the site before anything of it runs.
    modified = tmp_path / "modified" / "fracfl"
    from flwr.cli.build import build_fab_from_disk

    zipfile.ZipFile(io.BytesIO(build_fab_from_disk(REPO))).extractall(modified)
    marker = tmp_path / "modified-code-ran"
    with (modified / "client" / "client_app.py").open("a") as f:
        f.write(f"\nopen({str(marker)!r}, 'w').close()\n")
    assert (
        main(
            [
                "deploy",
                "sign-fab",
                str(REPO),
                "--key",
                str(tmp_path / "publisher" / "study.key"),
                "--out",
                str(tmp_path / "approval.json"),
            ]
        )
        == 0
    )
    assert main(["site", "approve-app", str(site_dir), str(tmp_path / "approval.json")]) == 0
    query(modified)
    refusals = [e for e in map(json.loads, (site_dir / AUDIT).read_text().splitlines()) if e["event"] == "fab-refused"]
    assert refusals and not marker.exists()
    assert refusals[0]["fab_sha256"] == hashlib.sha256(build_fab_from_disk(modified)).hexdigest()
    assert "is not approved at this site" in flower.log("st_marys")

    # The approved bundle (signed by the publisher the site trusts) runs: the site answers the ServerApp's query.
    approved = query(REPO)
    assert "1 of 1 SuperNodes are real sites" in approved["status-details"] and "st_marys" in approved["status-details"]
    logs = flower.cli("log", str(approved["run-id"]), "operator", "--show")
    assert "real sites" in logs


@pytest.mark.parametrize(
    "path",
    [
        b"/v1/fleet/../control/ListRuns",
        b"/v1/fleet/./../control/ListRuns",
        b"/v1/fleet/%2e%2e/control/ListRuns",
        b"/v1/fleet%2F..%2Fcontrol/ListRuns",
        b"/v1/%63ontrol/ListRuns",
        b"/v1/fleet/..\\control/ListRuns",
        b"/v1/fleet//control/ListRuns",
        b"/v1/fleet/..",
        b"v1/fleet/create-node",
    ],
)
def test_a_path_that_could_mean_another_is_refused_before_any_check_of_its_prefix(path):
    """A Fleet prefix cannot smuggle a Control request past the operator check, however the SuperLink would read it."""
    with pytest.raises(Refused) as refused:
        _authorize(path, operator=None)
    assert refused.value.status == "400 Bad Request"
    with pytest.raises(Refused):
        _authorize(path, operator="operator-1")  # not even for an operator


def test_plain_paths_go_where_their_prefix_says():
    _authorize(b"/v1/fleet/create-node", operator=None)
    _authorize(b"/v1/control/list-runs", operator="operator-1")
    with pytest.raises(Refused, match="operator certificate"):
        _authorize(b"/v1/control/list-runs", operator=None)
    with pytest.raises(Refused, match="only the Fleet and Control"):
        _authorize(b"/v1/runtime/pull-messages", operator="operator-1")
