"""`fracfl deploy certs|node-key|systemd`: the TLS and authentication files and the service units of a Flower
deployment (docs/deployment.md)."""

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
    path = write_unit(a.role, Path(a.out), args, a.user, Path(a.workdir))
    print(f"wrote {path}")
    print(
        f"install:  sudo cp {path} /etc/systemd/system/ && sudo systemctl daemon-reload && "
        f"sudo systemctl enable --now {path.stem}\nlog:      journalctl -u {path.stem} -f"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deploy",
        help="TLS certificates and SuperNode keys for a Flower deployment",
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
        help="a systemd unit for the SuperLink or a SuperNode, with this environment's paths",
        description="Writes fracfl-ROLE.service: the SuperLink runs flower-superlink ARGS, a SuperNode runs "
        "`fracfl site supernode -- ARGS`, both from this environment's bin/ and offline, with a restart policy "
        "that fits Flower's refusal of a SuperNode restarted soon after a crash. See docs/deployment.md, Services.",
    )
    roles = q.add_subparsers(dest="role", metavar="ROLE", required=True)
    for role, program in (("superlink", "flower-superlink"), ("supernode", "flower-supernode")):
        r = roles.add_parser(
            role, help=f"runs {program} ARGS" + (" through fracfl site supernode" * (role == "supernode"))
        )
        r.add_argument("--out", default=".", help="folder for the unit file (default: here; never overwritten)")
        r.add_argument("--user", required=True, help="the account the service runs as (owns keys, state, ledger)")
        r.add_argument("--workdir", required=True, help="absolute working directory; FLWR_HOME is WORKDIR/.flwr")
        r.add_argument("args", nargs=argparse.REMAINDER, help=f"-- then {program}'s arguments")
        r.set_defaults(func=_systemd)
