"""Round commits off the critical path: round r's checkpoint and registry publication are written while the
sites already work on round r+1.

At most one commit is in flight: queuing round r+1's commit first waits for round r's, and the run waits for the
last one before it ends. A commit that fails stops the run at the next wait. A server killed meanwhile resumes from
the last checkpoint written, dropping the records of the rounds after it and running those rounds again, exactly
as when it is killed mid-round; what a commit writes is ordered (checkpoint, then registry) for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType


class Committer:
    """`with Committer() as c: c.submit(work)`; see the module docstring."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fracfl-commit")
        self._pending: Future[None] | None = None

    def submit(self, work: Callable[[], None]) -> None:
        self.wait()
        self._pending = self._pool.submit(work)

    def wait(self) -> None:
        """Block until the commit in flight is written; re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> Committer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if kind is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)  # an interrupted run still finishes writing what it started
