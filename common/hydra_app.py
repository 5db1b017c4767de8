"""Run a job function under Hydra from a `fracfl` subcommand, so overrides, multirun and run folders work as usual."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from common.config import CONF_DIR
from common.errors import FracflError


def run_hydra(
    config_name: str, overrides: list[str], job: Callable[[DictConfig], None], command: str | None = None
) -> int:
    """Compose `conf/<config_name>.yaml` with `overrides` and run `job`; user errors exit 2 with one line."""
    failed: list[FracflError] = []

    def task(cfg: DictConfig) -> None:
        try:
            job(cfg)
        except FracflError as e:
            failed.append(e)
            print(f"fracfl {command or config_name}: error: {e}", file=sys.stderr)

    argv = sys.argv
    sys.argv = [f"fracfl-{config_name}", *overrides]
    try:
        hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(task)()
    except SystemExit as e:  # Hydra exits on a bad override after printing what is wrong
        return int(e.code or 0)
    finally:
        sys.argv = argv
    return 2 if failed else 0


def register_hydra_command(
    sub: argparse._SubParsersAction,
    name: str,
    config_name: str,
    help: str,
    description: str,
    job: Callable[[DictConfig], None],
) -> None:
    """A subcommand whose arguments go verbatim to Hydra (`--multirun`, `--cfg job`, key=value overrides)."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="Hydra overrides")
    p.set_defaults(func=lambda a: run_hydra(config_name, a.overrides, job, name), passthrough=True)
