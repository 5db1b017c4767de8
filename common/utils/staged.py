"""Update a whole folder so that readers see it complete or not at all: build the new version beside it, then swap.

`staged_folder(out)` yields a staging folder holding hard links to `out`'s current files (cheap, and writing a new
file there never touches the old one); on success the staging folder replaces `out` by two renames. A crash at any
point leaves either the old folder or the new one: the next call finishes or undoes an interrupted swap, and an
exception inside the block removes the staging folder, leaving `out` as it was (or absent, if it was).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.utils.durable import fsync_dir


def _siblings(out: Path) -> tuple[Path, Path]:
    return out.with_name(f".{out.name}.staging"), out.with_name(f".{out.name}.previous")


def recover(out: Path) -> None:
    """Finish what a crash interrupted: a previous version without a current one is put back; leftovers go."""
    staging, previous = _siblings(out)
    if previous.exists():
        if out.exists():
            shutil.rmtree(previous)  # the swap completed; only the clean-up was missed
        else:
            os.rename(previous, out)  # crashed between the two renames: the old complete version comes back
    if staging.exists():
        shutil.rmtree(staging)


@contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """Yield a folder to build `out`'s next version in; it becomes `out` only if the block completes."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recover(out)
    staging, previous = _siblings(out)
    if out.exists():
        _link_tree(out, staging)
    else:
        staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        os.rename(out, previous)
        os.rename(staging, out)
        shutil.rmtree(previous)
    else:
        os.rename(staging, out)
    fsync_dir(out.parent)


def _link_tree(src: Path, dst: Path) -> None:
    """`dst` mirrors `src` with hard links (copies where the filesystem has none)."""
    for root, _, files in os.walk(src):
        target = dst / Path(root).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            try:
                os.link(Path(root) / name, target / name)
            except OSError:
                shutil.copy2(Path(root) / name, target / name)
