"""common/utils/durable.py: the lock that keeps two writers of one folder apart (the pool build, the registry's
publishes, a site's version requests) and the atomic replacement readers rely on."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from common.utils.durable import locked, replace_atomic


def test_a_second_writer_waits_for_the_first(tmp_path: Path) -> None:
    lock = tmp_path / "new" / "folder" / ".lock"  # its folder is made
    order: list[str] = []
    held = threading.Event()

    def first() -> None:
        with locked(lock):
            held.set()
            order.append("first in")
            time.sleep(0.3)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    held.wait(5)
    with locked(lock):  # another open file: flock makes it wait, as another process would
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]


def test_replace_atomic_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "outcome.json"
    replace_atomic(target, "old")
    replace_atomic(target, b"new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["outcome.json"]
