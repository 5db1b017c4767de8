"""The `fracfl` console command: subcommands are discovered from the `fracfl.commands` entry-point group.

Each package (common, client, server, simulations) registers its own subcommands in pyproject.toml, so this
module never imports `client` or `server` directly, and a missing optional part only removes its subcommands.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from common.errors import FracflError


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(
        prog="fracfl",
        description="Federated continuous learning for bone-fracture detection on radiographs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for ep in sorted(entry_points(group="fracfl.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ModuleNotFoundError as e:
            if e.name != ep.module:  # the command's module exists but something it imports is missing: a real error
                raise
            continue  # installed metadata names a command this source tree does not have: no such subcommand
        register(sub)
    return parser, sub


def main(argv: list[str] | None = None) -> int:
    """Parse, dispatch, and turn user-facing errors into one clear line and a non-zero exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser, sub = build_parser()
    command = sub.choices.get(argv[0]) if argv else None
    if command is not None and command.get_default("passthrough") and not {"-h", "--help"} & set(argv[1:2]):
        # Hydra-driven commands take their arguments verbatim (`--multirun`, `--cfg job`, key=value overrides).
        args = argparse.Namespace(command=argv[0], overrides=argv[1:], func=command.get_default("func"))
    else:
        args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FracflError as e:
        print(f"fracfl {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
