"""`fracfl site init DIR`: a hospital site's own privacy configuration (limits and ledger) for its SuperNode;
`fracfl site supernode -- ARGS`: its SuperNode as a service (retries a refused restart, leaves no orphans);
`fracfl site purge --older-than DAYS`: its retention of kept copies, quarantined files and linking-table rows;
`fracfl site app-gate|approve-app`: which app bundles its SuperNode may run."""

from __future__ import annotations

import argparse
from pathlib import Path

from client.commands import site_models, site_pool


def _init(a: argparse.Namespace) -> int:
    from client.site_config import NODE_KEY, write_site_config

    path = write_site_config(
        Path(a.dir), target_epsilon=a.target_epsilon, ceiling_epsilon=a.ceiling_epsilon, delta=a.delta
    )
    print(f"wrote {path} (ledger: {path.parent / 'privacy'}; back it up)")
    print(
        f"ledger signing key: {path.parent / 'privacy' / 'ledger-key.pem'} (owner-only: let only the SuperNode's "
        "account read it; keep a copy offline, a lost key stops training until restored)"
    )
    print(
        f"SuperNode: fracfl site supernode -- ... --node-config \"site-name='NAME' data-dir='/data/...' "
        f"{NODE_KEY}='{path}'\""
    )
    return 0


def _supernode(a: argparse.Namespace) -> int:
    from client.supervise import run_supernode

    gate = Path(a.app_gate) if a.app_gate else None
    return run_supernode(a.args[1:] if a.args[:1] == ["--"] else a.args, a.retry_for, gate)


def _purge(a: argparse.Namespace) -> int:
    import logging

    from client.purge import purge
    from common.errors import ConfigError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    queue = Path(a.queue_dir) if a.queue_dir else None
    keep = Path(a.keep_dir) if a.keep_dir else None
    quarantine = a.quarantine_dir or (queue / "quarantine" if queue else None)
    deid = a.deid_dir or (keep.parent / "deid" if keep else None)  # where the DICOM pipeline keeps its links
    places = {"--queue-dir": queue, "--keep-dir": keep, "--quarantine-dir": quarantine, "--deid-dir": deid}
    for flag, path in places.items():
        if path is not None and not Path(path).is_dir():
            print(f"{flag} {path}: no such folder, skipped")
    if not any(path is not None and Path(path).is_dir() for path in places.values()):
        raise ConfigError("site purge: none of the places given exists; nothing to purge")
    journal = a.journal or ((queue or keep or Path(deid)) / "purge-log.jsonl")
    result = purge(
        a.older_than,
        keep_dir=keep,
        quarantine_dir=quarantine,
        queue_dir=queue,
        deid_dir=deid,
        apply=a.yes,
        journal=journal,
    )
    verb = "removed" if a.yes else "would remove"
    for place, n in result.counts.items():
        print(f"{verb} {n} {place}")
    print(f"{verb} {result.bytes:,} bytes of files; journal: {journal}")
    if result.undated_links:
        print(
            f"kept {result.undated_links} linking-table rows with no date (written before retention was "
            "recorded; they are dated from their next use)"
        )
    if result.protected:
        print(f"left {result.protected} privacy-ledger file(s) alone: the ledger is never purged")
    if not a.yes:
        print("dry run: nothing was removed; add --yes to remove")
    return 0


def _app_gate(a: argparse.Namespace) -> int:
    from client.fab_gate import APPROVED, write_launcher

    launcher = write_launcher(Path(a.dir))
    (Path(a.dir) / "publishers").mkdir(exist_ok=True)
    print(f"wrote {launcher}: start the SuperNode with PATH={launcher.parent}:$PATH")
    print(f"trusted publisher keys go in {Path(a.dir) / 'publishers'}/; approved bundles in {Path(a.dir) / APPROVED}")
    return 0


def _approve_app(a: argparse.Namespace) -> int:
    from client.fab_gate import approve
    from common.fab_approval import fab_sha256, verify

    site = Path(a.dir)
    if a.app:
        sha, details = fab_sha256(Path(a.app).resolve()), {"source": "reviewed folder", "note": a.note}
    else:
        signed = verify(Path(a.approval), site / "publishers")
        sha = signed["fab_sha256"]
        details = {"source": "publisher signature", "publisher": signed["publisher"], "note": signed["note"]}
    approve(site, sha, **details)
    print(f"approved app bundle sha256:{sha} ({details['source']}{': ' + details['note'] if details['note'] else ''})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "site",
        help="a hospital site's own settings (privacy limits and ledger)",
        description="Settings that belong to the site, not the server; see docs/deployment.md.",
    )
    ssub = p.add_subparsers(dest="site_command", metavar="ACTION", required=True)
    q = ssub.add_parser("init", help="write DIR/site.toml: the site's privacy target, ceiling and ledger folder")
    q.add_argument("dir", help="folder for site.toml and the privacy ledger (durable, backed-up storage)")
    q.add_argument(
        "--target-epsilon",
        type=float,
        default=8.0,
        help="lifetime epsilon the noise is planned for (default %(default)s)",
    )
    q.add_argument(
        "--ceiling-epsilon",
        type=float,
        default=10.0,
        help="lifetime epsilon never crossed: rounds beyond it are refused (default %(default)s)",
    )
    q.add_argument("--delta", type=float, default=None, help="delta (default: min(1e-5, 0.1/N) for N images)")
    q.set_defaults(func=_init)
    q = ssub.add_parser(
        "supernode",
        help="run flower-supernode as a service: restart it while the SuperLink refuses it after a crash",
        description="Runs `flower-supernode ARGS` (from PATH) with its output, restarts it with backoff while the "
        "SuperLink refuses to activate it (for up to a minute after a crash), and ends every process it started when "
        "it ends or on SIGTERM/SIGINT. See docs/deployment.md, Services.",
    )
    q.add_argument(
        "--retry-for",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="keep retrying a refused activation this long (default %(default)s)",
    )
    q.add_argument(
        "--app-gate",
        metavar="SITE_DIR",
        default=None,
        help="run only app bundles this site approved (SITE_DIR/bin from `fracfl site app-gate`; refuses to start "
        "without it)",
    )
    q.add_argument("args", nargs=argparse.REMAINDER, help="-- then flower-supernode's arguments")
    q.set_defaults(func=_supernode)
    r = ssub.add_parser(
        "purge",
        help="remove kept copies, quarantined files and linking-table rows older than DAYS (a dry run unless --yes)",
        description="Retention: finds what the site keeps about patients that is older than "
        "--older-than days and, with --yes, removes it. Never touches the privacy ledger. Each run "
        "appends its counts (no names) to a journal. See docs/governance.md.",
    )
    r.add_argument("--older-than", type=float, required=True, metavar="DAYS", help="retention period in days")
    r.add_argument(
        "--queue-dir",
        default="var/listener",
        help="the listener's queue_dir (failed/, done/ and quarantine/ under it; default %(default)s)",
    )
    r.add_argument("--keep-dir", default=None, help="the listener's keep_dir (de-identified copies)")
    r.add_argument("--quarantine-dir", default=None, help="quarantine folder (default QUEUE_DIR/quarantine)")
    r.add_argument(
        "--deid-dir",
        default=None,
        help="folder of the linking table links.sqlite (default KEEP_DIR/../deid, as the listener uses)",
    )
    r.add_argument("--journal", default=None, help="append the counts here (default QUEUE_DIR/purge-log.jsonl)")
    r.add_argument("--yes", action="store_true", help="remove; without it, only report what would go")
    r.set_defaults(func=_purge)

    g = ssub.add_parser(
        "app-gate", help="DIR/bin/flwr-clientapp: the SuperNode runs only app bundles this site approved"
    )
    g.add_argument("dir", help="the site folder (as for `fracfl site init`)")
    g.set_defaults(func=_app_gate)
    g = ssub.add_parser(
        "approve-app",
        help="approve one app bundle: a publisher's signed approval, or a source folder the site reviewed itself",
    )
    g.add_argument("dir", help="the site folder")
    how = g.add_mutually_exclusive_group(required=True)
    how.add_argument("approval", nargs="?", help="APPROVAL.json from `fracfl deploy sign-fab`")
    how.add_argument("--app", help="the app's source folder: approve the bundle `flwr run` builds from it")
    g.add_argument("--note", default="", help="with --app: what was reviewed")
    g.set_defaults(func=_approve_app)
    site_pool.register_actions(ssub)
    site_models.register_actions(ssub)
