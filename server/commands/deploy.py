"""`fracfl deploy ...`: the TLS and authentication files and the service units of a Flower deployment, the mTLS
front door of the SuperLink's Control API with the operators' tunnel, and signed approvals of app bundles
(docs/deployment.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _certs(a: argparse.Namespace) -> int:
    from server.deploy.certs import make_superlink_certs

    files = make_superlink_certs(Path(a.out), a.host or ["localhost"], days=a.days)
    for what, path in files.items():
        print(f"{what:8s} {path}")
    print(
        f"SuperLink:  flower-superlink --ssl-ca-certfile {files['ca']} --ssl-certfile {files['cert']} "
        f"--ssl-keyfile {files['key']} ...\nSuperNodes and `flwr` get {files['ca']} (public); keep "
        f"{files['ca_key']} offline."
    )
    return 0


def _node_key(a: argparse.Namespace) -> int:
    from server.deploy.certs import make_node_key

    files = make_node_key(Path(a.out), a.name)
    print(f"private  {files['key']}  (stays on this machine: flower-supernode --auth-supernode-private-key)")
    print(f"public   {files['pub']}  (send to the coordinator: flwr supernode register {files['pub']} CONNECTION)")
    print(
        "privacy  the site's own limits and ledger: fracfl site init DIR (then site-config='DIR/site.toml' in the "
        "SuperNode's --node-config)"
    )
    return 0


def _systemd(a: argparse.Namespace) -> int:
    from server.deploy.systemd import write_unit

    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    gate = Path(a.app_gate) if getattr(a, "app_gate", None) else None
    path = write_unit(a.role, Path(a.out), args, a.user, Path(a.workdir), gate)
    print(f"wrote {path}")
    print(
        f"install:  sudo cp {path} /etc/systemd/system/ && sudo systemctl daemon-reload && "
        f"sudo systemctl enable --now {path.stem}\nlog:      journalctl -u {path.stem} -f"
    )
    return 0


def _operator_cert(a: argparse.Namespace) -> int:
    from server.deploy.certs import make_operator_cert

    files = make_operator_cert(Path(a.ca_dir), a.name, days=a.days)
    for what, path in files.items():
        print(f"{what:8s} {path}")
    print(
        f"give {a.name} {files['cert']} and {files['key']} (privately) with the federation's ca.pem; they run "
        f"`fracfl deploy operator-tunnel`. The control proxy gets {Path(a.ca_dir) / 'operator-ca.pem'}; keep "
        f"{Path(a.ca_dir) / 'operator-ca.key'} offline."
    )
    return 0


def _run_forever(listen: str, handler, tls, what: str) -> int:
    import asyncio
    import logging

    from server.deploy.control_proxy import serve, split_address

    address = split_address(listen, "--listen")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(serve(address, handler, tls, what))
    except KeyboardInterrupt:
        pass
    return 0


def _control_proxy(a: argparse.Namespace) -> int:
    from server.deploy.control_proxy import client_context, make_proxy_handler, server_context, split_address

    upstream = split_address(a.superlink, "--superlink")
    tls = server_context(Path(a.certfile), Path(a.keyfile), Path(a.operator_ca))
    handler = make_proxy_handler(upstream, client_context(Path(a.ca)))
    return _run_forever(a.listen, handler, tls, "control proxy")


def _operator_tunnel(a: argparse.Namespace) -> int:
    from server.deploy.control_proxy import client_context, make_tunnel_handler, split_address

    handler = make_tunnel_handler(
        split_address(a.proxy, "--proxy"), client_context(Path(a.ca), Path(a.cert), Path(a.key))
    )
    return _run_forever(a.listen, handler, None, "operator tunnel")


def _publisher_key(a: argparse.Namespace) -> int:
    from server.deploy.certs import make_publisher_key

    files = make_publisher_key(Path(a.out), a.name)
    print(f"private  {files['key']}  (stays with the publisher: fracfl deploy sign-fab --key)")
    print(f"public   {files['pub']}  (each site copies it into SITE_DIR/publishers/)")
    return 0


def _sign_fab(a: argparse.Namespace) -> int:
    import json

    from common.fab_approval import fab_sha256, sign

    sha = fab_sha256(Path(a.app).resolve())
    approval = sign(sha, Path(a.key), a.note)
    out = Path(a.out or f"fab-{sha[:12]}.approval.json")
    out.write_text(json.dumps(approval, indent=2) + "\n")
    print(f"app bundle sha256:{sha} (what `flwr run {a.app}` sends)")
    print(f"approval {out}: give it to the sites (fracfl site approve-app SITE_DIR {out})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deploy",
        help="certificates, keys, the control proxy and signed app bundles for a Flower deployment",
        description="Files for Flower's SuperLink/SuperNodes over TLS; see docs/deployment.md.",
    )
    dsub = p.add_subparsers(dest="deploy_command", metavar="ACTION", required=True)
    q = dsub.add_parser("certs", help="a CA and the SuperLink's server certificate (coordinator)")
    q.add_argument("out", help="folder for ca.pem, ca.key, superlink.pem, superlink.key (files are never overwritten)")
    q.add_argument(
        "--host",
        action="append",
        help="a DNS name or IP address SuperNodes use to reach the SuperLink "
        "(repeatable; localhost and 127.0.0.1 are always added)",
    )
    q.add_argument("--days", type=int, default=825, help="validity of the certificates in days (default 825)")
    q.set_defaults(func=_certs)
    q = dsub.add_parser("node-key", help="a SuperNode's authentication key pair (each site, on its own machine)")
    q.add_argument("out", help="folder for NAME.key (private) and NAME.pub (public)")
    q.add_argument("--name", required=True, help="file name and key comment, e.g. the site's name")
    q.set_defaults(func=_node_key)

    q = dsub.add_parser(
        "systemd",
        help="a systemd unit for the SuperLink, its control proxy or a SuperNode, with this environment's paths",
        description="Writes fracfl-ROLE.service: the SuperLink runs flower-superlink ARGS, the control proxy "
        "`fracfl deploy control-proxy ARGS`, a SuperNode `fracfl site supernode [--app-gate SITE_DIR] -- ARGS`, all "
        "from this environment's bin/ and offline, with a restart policy that fits Flower's refusal of a SuperNode "
        "restarted soon after a crash. See docs/deployment.md, Services.",
    )
    roles = q.add_subparsers(dest="role", metavar="ROLE", required=True)
    programs = (
        ("superlink", "flower-superlink"),
        ("supernode", "flower-supernode"),
        ("control-proxy", "fracfl deploy control-proxy"),
    )
    for role, program in programs:
        r = roles.add_parser(
            role, help=f"runs {program} ARGS" + (" through fracfl site supernode" * (role == "supernode"))
        )
        r.add_argument("--out", default=".", help="folder for the unit file (default: here; never overwritten)")
        r.add_argument("--user", required=True, help="the account the service runs as (owns keys, state, ledger)")
        r.add_argument("--workdir", required=True, help="absolute working directory; FLWR_HOME is WORKDIR/.flwr")
        if role == "supernode":
            r.add_argument("--app-gate", metavar="SITE_DIR", help="the site folder of `fracfl site app-gate`")
        r.add_argument("args", nargs=argparse.REMAINDER, help=f"-- then {program}'s arguments")
        r.set_defaults(func=_systemd)

    q = dsub.add_parser("operator-cert", help="a client certificate for one `flwr` operator (coordinator)")
    q.add_argument(
        "ca_dir", help="folder of the operator CA (operator-ca.pem/.key, made on first use) and NAME.pem/.key"
    )
    q.add_argument("--name", required=True, help="the operator's name (certificate common name, logged by the proxy)")
    q.add_argument("--days", type=int, default=365, help="validity in days (default %(default)s)")
    q.set_defaults(func=_operator_cert)

    q = dsub.add_parser(
        "control-proxy",
        help="the SuperLink's public port: Fleet API for SuperNodes, Control API for operators only (coordinator)",
    )
    q.add_argument("--listen", default="0.0.0.0:8000", help="public address (default %(default)s)")
    q.add_argument("--superlink", default="127.0.0.1:8001", help="the SuperLink on loopback (default %(default)s)")
    q.add_argument("--certfile", required=True, help="the SuperLink's certificate (superlink.pem)")
    q.add_argument("--keyfile", required=True, help="its key (superlink.key)")
    q.add_argument("--ca", required=True, help="the federation CA (ca.pem), to check the SuperLink")
    q.add_argument("--operator-ca", required=True, help="operator-ca.pem: operators' certificates must chain to it")
    q.set_defaults(func=_control_proxy)

    q = dsub.add_parser(
        "operator-tunnel", help="carry `flwr` to the control proxy with an operator certificate (operator's machine)"
    )
    q.add_argument("--proxy", required=True, help="the control proxy, HOST:PORT (the SuperLink's public address)")
    q.add_argument("--ca", required=True, help="the federation CA (ca.pem)")
    q.add_argument("--cert", required=True, help="your operator certificate (NAME.pem)")
    q.add_argument("--key", required=True, help="its key (NAME.key)")
    q.add_argument("--listen", default="127.0.0.1:9093", help="loopback address for `flwr` (default %(default)s)")
    q.set_defaults(func=_operator_tunnel)

    q = dsub.add_parser("publisher-key", help="the Ed25519 key that signs approved app bundles (publisher)")
    q.add_argument("out", help="folder for NAME.key (private) and NAME.pub (public, for the sites)")
    q.add_argument("--name", required=True, help="file name and key comment, e.g. the study's name")
    q.set_defaults(func=_publisher_key)

    q = dsub.add_parser("sign-fab", help="sign the app bundle `flwr run APP` sends (publisher)")
    q.add_argument("app", help="the app's source folder, exactly as it will be given to `flwr run`")
    q.add_argument("--key", required=True, help="the publisher's private key (fracfl deploy publisher-key)")
    q.add_argument("--note", default="", help="what this version is, e.g. 'fracfl 0.1.0, reviewed 2026-12-01'")
    q.add_argument("--out", default=None, help="approval file (default fab-HASH.approval.json)")
    q.set_defaults(func=_sign_fab)
