"""`fracfl review serve|users`: the site's review page and its local accounts (see docs/review.md)."""

from __future__ import annotations

import argparse
import getpass
import sys

from common.errors import FracflError


def _accounts(a: argparse.Namespace):
    from client.feedback.accounts import Accounts
    from client.feedback.store import FeedbackStore

    return Accounts(FeedbackStore(a.db))


def _serve(a: argparse.Namespace) -> int:
    import uvicorn

    from client.review.app import ReviewSettings, create_app

    accounts = _accounts(a)
    if not accounts.users():
        raise FracflError(f"{a.db}: no accounts yet; add one with `fracfl review users add NAME --db {a.db}`")
    app = create_app(accounts.store, accounts, ReviewSettings(secure_cookies=a.secure_cookies))
    print(f"fracfl review: http://{a.host}:{a.port}/ (feedback store {a.db}; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
    return 0


def _password(a: argparse.Namespace) -> str:
    if a.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {a.name}: ")
    if getpass.getpass("again: ") != first:
        raise FracflError("the two passwords differ")
    return first


def _users_add(a: argparse.Namespace) -> int:
    user = _accounts(a).add_user(a.name, _password(a), a.role)
    print(f"added {user.username} ({user.role}); their verdicts are signed {user.reviewer_id}")
    return 0


def _users_list(a: argparse.Namespace) -> int:
    for u in _accounts(a).users():
        print(f"{u.username}\t{u.role}\t{u.reviewer_id}\t{'disabled' if u.disabled else 'active'}\t{u.created_at}")
    return 0


def _users_disable(a: argparse.Namespace) -> int:
    user = _accounts(a).set_disabled(a.name, not a.enable)
    print(f"{user.username}: {'disabled (signed out everywhere)' if user.disabled else 'enabled'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "review",
        help="the site's review page: radiologists confirm, reject, correct findings",
        description="A web page (127.0.0.1 by default) where the site's radiologists give verdicts on "
        "fracfl's findings, stored in the site's feedback database; and its local accounts.",
    )
    rsub = p.add_subparsers(dest="review_command", metavar="ACTION", required=True)

    def with_db(q: argparse.ArgumentParser) -> argparse.ArgumentParser:
        q.add_argument("--db", required=True, help="the site's feedback database (the listener's feedback_db)")
        return q

    s = with_db(rsub.add_parser("serve", help="serve the review page"))
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    s.add_argument("--port", type=int, default=8321, help="port (default %(default)s)")
    s.add_argument(
        "--secure-cookies",
        action="store_true",
        help="mark cookies Secure: set this when a TLS reverse proxy serves the page",
    )
    s.set_defaults(func=_serve)

    users = rsub.add_parser("users", help="local accounts: add, list, disable")
    usub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    add = with_db(usub.add_parser("add", help="add an account (asks for the password twice)"))
    add.add_argument("name", help="user name to sign in with")
    add.add_argument(
        "--role",
        choices=["reviewer", "admin"],
        default="reviewer",
        help="reviewer: gives verdicts; admin: also reads the audit log (default %(default)s)",
    )
    add.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    add.set_defaults(func=_users_add)
    with_db(usub.add_parser("list", help="accounts with role, pseudonym and state")).set_defaults(func=_users_list)
    dis = with_db(usub.add_parser("disable", help="disable an account and end its sessions"))
    dis.add_argument("name")
    dis.add_argument("--enable", action="store_true", help="enable it again instead")
    dis.set_defaults(func=_users_disable)
