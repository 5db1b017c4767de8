"""Options that several subcommands share, spelled once: the same concept has the same flag everywhere.

Spellings that were renamed stay as hidden aliases for a while: they still work and print one deprecation line, so
scripts written against an older fracfl keep running while their owners update them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from common.config import CONF_DIR

MODEL_GROUP = CONF_DIR / "model"  # the Hydra group whose option names `--arch` also accepts


def deprecated(old: str, new: str) -> None:
    """Say on stderr that `old` was renamed to `new` (stdout stays clean for scripts that parse it)."""
    print(f"fracfl: warning: {old} is deprecated and will be removed; use {new}", file=sys.stderr)


class _Renamed(argparse.Action):
    """A hidden old spelling of a flag: stores into the new flag's destination after a deprecation line."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        deprecated(option_string or self.option_strings[0], self.new)
        setattr(namespace, self.dest, values)


def add_renamed(p: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept `old` as a hidden alias of the already added flag `new` (same destination, same type)."""
    target = next(a for a in p._actions if new in a.option_strings)
    p.add_argument(
        old,
        dest=target.dest,
        action=_Renamed,
        new=new,
        type=target.type,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )


def add_registry(p: argparse.ArgumentParser) -> None:
    """`--registry DIR`, the registry folder (`--root` before it was given one name across subcommands)."""
    p.add_argument(
        "--registry", default=None, metavar="DIR", help="registry folder (default: $FRACFL_REGISTRY, else ./registry)"
    )
    add_renamed(p, "--root", "--registry")


def add_batch_size(p: argparse.ArgumentParser, default: int, help: str | None = None) -> None:
    """`--batch-size N`, as the config key `batch_size` is spelt (`--batch` is its old spelling)."""
    p.add_argument("--batch-size", type=int, default=default, help=help or f"images per batch (default {default})")
    add_renamed(p, "--batch", "--batch-size")


def model_groups() -> dict[str, dict[str, Any]]:
    """The options of conf/model/ (e.g. yolov7_tiny, yolov7_nano) with their arch, width and depth."""
    from omegaconf import OmegaConf

    return {f.stem: dict(OmegaConf.load(f)) for f in sorted(MODEL_GROUP.glob("*.yaml"))}


def add_arch(p: argparse.ArgumentParser) -> None:
    """`--arch NAME` takes a conf/model/ option (what `model=NAME` picks in train/simulate) or a raw arch name;
    `--width`/`--depth` default to that option's values."""
    groups = model_groups()
    raw = sorted({str(g["arch"]) for g in groups.values()} - set(groups))
    p.add_argument(
        "--arch",
        default="yolov7_tiny",
        choices=[*groups, *raw],
        metavar="ARCH",
        help=f"a model config, as `model=NAME` picks in train: {', '.join(groups)}; or an arch as model "
        f"cards spell it: {', '.join(raw)} (default %(default)s)",
    )
    p.add_argument("--width", type=float, default=None, help="width multiple (default: the model config's)")
    p.add_argument("--depth", type=float, default=None, help="depth multiple (default: the model config's)")


def resolve_arch(a: argparse.Namespace) -> tuple[str, float, float]:
    """(arch, width, depth) from `--arch`, `--width`, `--depth`: explicit flags win over the model config."""
    group = model_groups().get(a.arch, {"arch": a.arch, "width": 1.0, "depth": 1.0})
    width = float(group["width"]) if a.width is None else a.width
    depth = float(group["depth"]) if a.depth is None else a.depth
    return str(group["arch"]), width, depth
