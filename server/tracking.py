"""Experiment tracking with Weights & Biases: per-round metrics, a run summary and a sanitised config.

Three modes (`tracking.mode`):

- ``offline`` (default): wandb writes the run to ``RUN_DIR/wandb/offline-run-*`` and nothing leaves the machine.
  Someone allowed to upload copies the folder out and runs ``wandb sync RUN_DIR/wandb/offline-run-*``.
- ``online``: wandb streams to its server as the run goes (the only mode that may open a network connection).
- ``disabled``: a no-op tracker; wandb is not even imported and nothing is written.

Privacy. A tracking run is built to be shared (that is what it is for), so nothing in it may identify a patient.
Radiograph folders are often named after patients or accession numbers, DICOM names look like ``DOE^JANE``, and
free-text notes and error messages can quote either. So every value is checked before it reaches wandb:

- metric keys must match ``METRIC_KEY`` (letters, digits, ``_ . / -``);
- ``log`` keeps only finite numbers: strings and any other type are dropped with a warning;
- ``summary`` keeps finite numbers and strings matching ``SAFE_STRING`` (a site name, a model name);
- the config is flattened (``{"data": {"imgsz": 640}}`` -> ``data.imgsz``) and keeps numbers, booleans and
  ``SAFE_STRING`` strings; a path keeps only its final component (``/data/site_a/data.yaml`` -> ``data.yaml``),
  everything else (free text, ``None``, objects) is dropped.

Warnings name the key, never the dropped value. The rules keep a patient name out unless the name is itself a
safe-looking token such as a file name ``doe_jane.yaml``: name files after sites, never after patients.

wandb itself is made quiet and private: no console capture (stdout can quote file names), no code, git state,
requirements, system metadata (host, user, command line) or system metrics, and no crash reports (its Sentry /
telemetry client is switched off). Its logs and cache go to fracfl's cache folder, not the home folder.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from types import TracebackType
from typing import Any

from common.errors import ConfigError
from common.offline import cache_dir

log = logging.getLogger("fracfl.tracking")

MODES = ("offline", "online", "disabled")
DEFAULT_MODE = "offline"

SAFE_STRING = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
"""Strings allowed into wandb: short tokens such as site, model or file names; no spaces, no ``^``, no ``/``."""

METRIC_KEY = re.compile(r"^[A-Za-z0-9_./-]{1,128}$")
"""Metric and config keys allowed into wandb (``/`` groups charts: ``site/trauma_center/map50``)."""


# --- sanitising (pure functions, also usable without wandb) -------------------------------------------------------


def _finite_number(value: object) -> float | int | None:
    """`value` as a plain int/float when it is a finite real number (numpy and 0-d torch scalars included)."""
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, numbers.Real) and hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()  # numpy scalar, 0-d array, one-element tensor
        except Exception:  # noqa: BLE001 - several elements, or not a number at all
            return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        f = float(value)
        return f if math.isfinite(f) else None
    return None


def _key_label(key: object) -> str:
    """A key as it may appear in a warning: itself when safe, else only its length (it may be the leak)."""
    return repr(key) if isinstance(key, str) and METRIC_KEY.match(key) else f"<disallowed key, {len(str(key))} chars>"


def _safe_string(value: str) -> str | None:
    """`value` if it is a safe token; a path reduced to its final component if that is one; else None."""
    if SAFE_STRING.match(value):
        return value
    if "/" in value or "\\" in value:
        name = PureWindowsPath(value).name if "\\" in value else PurePosixPath(value).name
        if name and SAFE_STRING.match(name):
            return name
    return None


def sanitize_metrics(metrics: Mapping[str, object], what: str = "metric") -> tuple[dict[str, float | int], list[str]]:
    """Finite numbers under allowed keys, and the labels (never values) of what was dropped."""
    kept: dict[str, float | int] = {}
    dropped: list[str] = []
    for key, value in metrics.items():
        number = _finite_number(value)
        if not (isinstance(key, str) and METRIC_KEY.match(key)) or number is None:
            dropped.append(f"{what} {_key_label(key)} ({_why(key, value)})")
            continue
        kept[key] = number
    return kept, dropped


def _why(key: object, value: object) -> str:
    if not (isinstance(key, str) and METRIC_KEY.match(key)):
        return "key not allowed"
    if isinstance(value, numbers.Real) or hasattr(value, "item"):
        return "not a finite number"
    return f"{type(value).__name__} values are not logged"


def sanitize_summary(values: Mapping[str, object]) -> tuple[dict[str, float | int | str], list[str]]:
    """Finite numbers, and strings that are safe tokens (site names), under allowed keys."""
    kept: dict[str, float | int | str] = {}
    dropped: list[str] = []
    for key, value in values.items():
        if isinstance(value, str) and isinstance(key, str) and METRIC_KEY.match(key):
            if SAFE_STRING.match(value):
                kept[key] = value
            else:
                dropped.append(f"summary {_key_label(key)} (string does not match {SAFE_STRING.pattern})")
            continue
        one, why = sanitize_metrics({key: value}, "summary")
        kept.update(one)
        dropped += why
    return kept, dropped


def _config_value(value: object) -> object | None:
    number = _finite_number(value)
    if number is not None:
        return bool(value) if isinstance(value, bool) else number
    if isinstance(value, str):
        return _safe_string(value) if value else ""
    if isinstance(value, PurePath):
        return _safe_string(str(value))
    if isinstance(value, list | tuple):
        items = [_config_value(v) for v in value if not isinstance(v, Mapping | list | tuple)]
        if len(items) == len(value) and all(v is not None for v in items):
            return items
    return None


def sanitize_config(config: Mapping[str, object], prefix: str = "") -> tuple[dict[str, object], list[str]]:
    """Flatten nested mappings to dotted keys; keep numbers, booleans, safe strings and path names only.

    Lists are kept when every item is such a scalar (``imgsz: [640, 640]``), else dropped whole.
    """
    kept: dict[str, object] = {}
    dropped: list[str] = []
    for key, value in config.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            sub, why = sanitize_config(value, f"{full}.")
            kept.update(sub)
            dropped += why
            continue
        if not METRIC_KEY.match(full):
            dropped.append(f"config {_key_label(full)} (key not allowed)")
            continue
        clean = _config_value(value)
        if clean is None:
            if value is not None:
                dropped.append(f"config {full!r} ({type(value).__name__} value not allowed)")
            continue
        kept[full] = clean
    return kept, dropped


# --- trackers -----------------------------------------------------------------------------------------------------


class Tracker:
    """What the server talks to: `log` per round, `summary` at the end, `finish` once. A context manager."""

    mode: str = "disabled"

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record `metrics` at `step` (the round). Non-finite or non-numeric values are dropped with a warning."""

    def summary(self, values: Mapping[str, float | str]) -> None:
        """Set run-level values (best round, final mAP, site names)."""

    def finish(self) -> None:
        """Close the run; further calls are ignored."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish()


class DisabledTracker(Tracker):
    """`tracking.mode=disabled`: accepts every call, writes nothing, imports nothing."""


class WandbTracker(Tracker):
    """A wandb run that only ever receives sanitised values (see the module docstring)."""

    def __init__(self, run: Any, mode: str):
        self._run = run
        self.mode = mode
        self._last_step: int | None = None
        self._warned: set[str] = set()
        self._finished = False

    @property
    def run_dir(self) -> Path:
        """The run's own folder, ``RUN_DIR/wandb/offline-run-*`` in offline mode (what `wandb sync` takes)."""
        return Path(self._run.dir).parent

    def _warn(self, dropped: list[str]) -> None:
        new = [d for d in dropped if d not in self._warned]
        if new:
            self._warned.update(new)
            log.warning("tracking: not sent to wandb: %s", "; ".join(new))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._finished:
            raise RuntimeError("tracking: log() after finish()")
        step = int(step)
        if self._last_step is not None and step < self._last_step:
            self._warn([f"metrics for step {step} (wandb steps only go forward; last step {self._last_step})"])
            return
        kept, dropped = sanitize_metrics(metrics)
        self._warn(dropped)
        if kept:
            self._run.log(kept, step=step)
            self._last_step = step

    def summary(self, values: Mapping[str, float | str]) -> None:
        if self._finished:
            raise RuntimeError("tracking: summary() after finish()")
        kept, dropped = sanitize_summary(values)
        self._warn(dropped)
        for key, value in kept.items():
            self._run.summary[key] = value

    def finish(self, exit_code: int = 0) -> None:
        if not self._finished:
            self._finished = True
            self._run.finish(exit_code=exit_code)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


def _quiet_wandb_env() -> None:
    """Process-wide wandb switches, set before wandb starts its service process (which inherits them)."""
    os.environ["WANDB_ERROR_REPORTING"] = "false"  # no Sentry/telemetry: crash reports quote paths
    os.environ.setdefault("WANDB_SILENT", "true")
    root = cache_dir() / "wandb"
    os.environ.setdefault("WANDB_CACHE_DIR", str(root / "cache"))  # wandb-core's own logs land here
    os.environ.setdefault("WANDB_DATA_DIR", str(root / "data"))


def _settings(wandb: Any, mode: str) -> Any:
    return wandb.Settings(
        mode=mode,
        silent=True,
        quiet=True,
        show_info=False,
        show_warnings=False,
        console="off",  # stdout is not captured: log lines can quote file names
        save_code=False,
        disable_code=True,
        disable_git=True,
        disable_job_creation=True,
        x_save_requirements=False,
        x_disable_meta=True,  # no host name, user name, command line (it can hold data paths) or cwd
        x_disable_machine_info=True,
        x_disable_stats=True,  # no CPU/GPU sampling thread (and no cloud metadata probes)
        label_disable=True,
    )


def _check_name(field: str, value: str) -> str:
    if not isinstance(value, str) or not SAFE_STRING.match(value):
        raise ConfigError(
            f"tracking.{field}={value!r} is not allowed: use 1-64 characters from "
            "letters, digits, '_', '.', '-' (it is sent to wandb, so it must not name a patient)"
        )
    return value


def make_tracker(mode: str, run_dir: Path, project: str, run_name: str, config: Mapping[str, object]) -> Tracker:
    """A tracker for `mode` (offline, online or disabled), its wandb files under ``run_dir/wandb``.

    `config` is sanitised before wandb sees it (see `sanitize_config`). Raises `ConfigError` for an unknown mode,
    an unsafe project or run name, a missing wandb package, or a wandb run that cannot start.
    """
    if mode not in MODES:
        raise ConfigError(f"tracking.mode={mode!r} is not valid: use one of {', '.join(MODES)}")
    if mode == "disabled":
        return DisabledTracker()
    _check_name("project", project)
    _check_name("run_name", run_name)
    clean, dropped = sanitize_config(config)
    if dropped:
        log.warning("tracking: config not sent to wandb: %s", "; ".join(dropped))

    _quiet_wandb_env()
    try:
        import wandb
    except ImportError as e:
        raise ConfigError(
            f"tracking.mode={mode} needs the wandb package ({e}); install it or set tracking.mode=disabled"
        ) from e

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        run = wandb.init(
            project=project,
            name=run_name,
            dir=str(run_dir),
            config=clean,
            settings=_settings(wandb, mode),
            reinit="create_new",
        )
    except Exception as e:
        hint = " (log in with `wandb login`, or use tracking.mode=offline and sync later)" if mode == "online" else ""
        raise ConfigError(
            f"tracking.mode={mode}: wandb could not start a run in {run_dir}: {type(e).__name__}: {e}{hint}"
        ) from e
    return WandbTracker(run, mode)
