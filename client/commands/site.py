"""`fracfl site init DIR`: a hospital site's own privacy configuration (limits and ledger) for its SuperNode."""

from __future__ import annotations

import argparse
from pathlib import Path


def _init(a: argparse.Namespace) -> int:
    from client.site_config import NODE_KEY, write_site_config

    path = write_site_config(Path(a.dir), target_epsilon=a.target_epsilon, ceiling_epsilon=a.ceiling_epsilon,
                             delta=a.delta)
    print(f"wrote {path} (ledger: {path.parent / 'privacy'}; back it up)")
    print(f"ledger signing key: {path.parent / 'privacy' / 'ledger-key.pem'} (owner-only: let only the SuperNode's "
          "account read it; keep a copy offline, a lost key stops training until restored)")
    print(f"SuperNode: flower-supernode ... --node-config \"site-name='NAME' data-dir='/data/...' "
          f"{NODE_KEY}='{path}'\"")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("site", help="a hospital site's own settings (privacy limits and ledger)",
                       description="Settings that belong to the site, not the server; see docs/deployment.md.")
    ssub = p.add_subparsers(dest="site_command", metavar="ACTION", required=True)
    q = ssub.add_parser("init", help="write DIR/site.toml: the site's privacy target, ceiling and ledger folder")
    q.add_argument("dir", help="folder for site.toml and the privacy ledger (durable, backed-up storage)")
    q.add_argument("--target-epsilon", type=float, default=8.0,
                   help="lifetime epsilon the noise is planned for (default %(default)s)")
    q.add_argument("--ceiling-epsilon", type=float, default=10.0,
                   help="lifetime epsilon never crossed: rounds beyond it are refused (default %(default)s)")
    q.add_argument("--delta", type=float, default=None, help="delta (default: min(1e-5, 0.1/N) for N images)")
    q.set_defaults(func=_init)
