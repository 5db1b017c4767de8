"""Hot reload: the listener follows the model store's current version (M/current.json), switching between items.

Each item is processed whole by the model that was current when its processing started: the queue hands an item to
one worker once (client/listener/queue.py), so a switch neither loses nor repeats a study. A clinical listener
starts only with an approved, intact version (signed with the site's key, files unchanged) and never switches to
one that is not: it keeps the model it has, and says why in its log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from client.listener.processor import Processor
from client.models.approval import NotApproved, check_approval, operating_point
from client.models.store import ModelStore
from common.errors import ConfigError, FracflError

log = logging.getLogger("fracfl.listener")


class ReloadingProcessor:
    """A `Processor` over the store's current version; `build(folder, conf)` makes the processor for a version folder
    at the operating point its approval names (None: the configured one). `public_key` (hex): clinical use, only
    versions whose approval it verifies are loaded."""

    def __init__(
        self, store: ModelStore, build: Callable[[Path, float | None], Processor], public_key: str | None = None
    ):
        self.store, self.build, self.public_key = store, build, public_key
        self._lock = threading.Lock()
        self._loaded: tuple[str, str] | None = None  # (version, signature) of the processor in use
        self._refused: str | None = None  # why the last current.json was refused (reported once)
        self._processor: Processor | None = None
        self._refresh(initial=True)

    @property
    def version(self) -> str | None:
        """The store version in use (shown in status.json)."""
        return self._loaded[0] if self._loaded else None

    def _load(self) -> tuple[tuple[str, str], Processor, float | None]:
        current = self.store.current()
        if current is None:
            raise ConfigError(
                f"config key models_dir: {self.store.root} has no current model yet "
                "(`fracfl site fetch V` then `fracfl site promote V`)"
            )
        wanted = (str(current.get("version")), str(current.get("signature")))
        point = operating_point(current)
        if wanted == self._loaded:
            assert self._processor is not None
            return wanted, self._processor, point
        if self.public_key is not None:
            problems = check_approval(self.store, current, self.public_key)
            if problems:
                raise NotApproved(
                    f"clinical listener refuses model {wanted[0]} from {self.store.root}: " + "; ".join(problems)
                )
        else:
            problems = self.store.check(wanted[0])
            if problems:
                raise NotApproved(f"listener refuses model {wanted[0]}: " + "; ".join(problems))
        return wanted, self.build(self.store.folder(wanted[0]), point), point

    def _refresh(self, initial: bool = False) -> Processor:
        try:
            wanted, processor, point = self._load()
        except (FracflError, OSError) as e:
            if initial:
                raise
            if str(e) != self._refused:  # once per change, not once per item
                log.error("%s; still using %s", e, self.version)
                self._refused = str(e)
            assert self._processor is not None
            return self._processor
        if wanted != self._loaded:
            at = "" if point is None else f" at its approved operating point {point:.4f}"
            if self._loaded is not None:
                log.info("switched model: %s -> %s%s (between items)", self._loaded[0], wanted[0], at)
            else:
                log.info("model %s from %s%s", wanted[0], self.store.root, at)
            self._loaded, self._processor, self._refused = wanted, processor, None
        return processor

    def __call__(self, path: Path) -> Sequence[Path]:
        with self._lock:  # one check per item; the item then runs on the processor current at its start
            processor = self._refresh()
        return processor(path)
