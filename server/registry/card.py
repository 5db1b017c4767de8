"""What a model card may hold, and the check every card passes before it is written.

The card writer serialises only the documented fields below. Metric tables keep numbers only: a metrics dict from
`DetectionReport.to_dict()` (common.metrics) loses its curves, confusion matrix and error lists (which name image
files) on the way in, and a metric whose name suggests identifying data (`patient_id`, `name`, `file`, ...) is
refused outright. No patient data can reach a card through these fields; free text appears only in site names,
status reasons, the strategy's parameters, the privacy descriptors and export notes, all of which the server fills
from its own configuration. The intended-use and limitations section is derived here from the card's own figures
(`server.registry.limits`), so every card has one and it always matches them.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

from common.errors import FracflError
from common.nn.model import ModelSpec
from server.registry.limits import limitations

# Top-level fields, in the order card.json lists them. `limitations` is derived from the others on every write (a
# value passed in is replaced); the last five are set by the registry.
SECTIONS = (
    "run_id",
    "round",
    "strategy",
    "config_hash",
    "model",
    "sites",
    "metrics",
    "privacy",
    "exports",
    "limitations",
    "version",
    "parent",
    "created",
    "updated",
    "hashes",
)
REGISTRY_OWNED = frozenset({"version", "created", "updated", "hashes"})
# Sections `Registry.update_card` may replace after publication (weights and provenance stay fixed).
UPDATABLE = frozenset({"privacy", "exports", "metrics"})

MODEL_DESCRIPTION = "YOLOv7-tiny backbone and neck with Ultralytics' anchor-free Detect head"
_ARCH_NAMES = {"yolov7-tiny": "YOLOv7-tiny", "yolov7": "YOLOv7"}
_SITE_KEYS = {"name", "examples", "status", "metrics"}
_MODEL_KEYS = {"arch", "width", "depth", "norm", "classes", "parameters", "description"}
_STATUS = re.compile(r"^(trained|budget exhausted|(rejected|failed|refused): \S.*)$")
# An edge export entry (one per variant, see docs/export.md): what was built, its file, and how it compares.
_EXPORT_TEXT = {"variant", "file", "status", "sha256", "note"}
_EXPORT_NUMBERS = {
    "bytes",
    "imgsz",
    "seconds",
    "map50",
    "map50_torch",
    "map50_delta_points",
    "sensitivity",
    "sensitivity_torch",
    "max_box_diff_px",
    "max_score_diff",
    "verdicts_agree",
    "n_images",
}
_EXPORT_FLAGS = {"meets_goal"}
_EXPORT_STATUS = re.compile(r"^(ok|(failed|timed out|skipped): \S.*)$")
EXPORT_FILE = re.compile(r"^exports/[A-Za-z0-9_.-]+\.tflite$")  # inside the version folder, never outside it
# Tokens of a metric name that suggest identifying data rather than an aggregate figure.
_IDENTIFYING = frozenset(
    {
        "patient",
        "patients",
        "name",
        "names",
        "id",
        "ids",
        "mrn",
        "dob",
        "birth",
        "birthdate",
        "accession",
        "uid",
        "ssn",
        "address",
        "phone",
        "file",
        "filename",
        "files",
        "path",
        "paths",
    }
)
_MAX_TEXT = 500


class CardError(FracflError, ValueError):
    """A card field is missing, of the wrong type, or not allowed on a card: the message names it."""


def describe_model(arch: str) -> str:
    """The honest one-line name of the network: YOLOv7 backbone and neck, but not YOLOv7's head."""
    name = _ARCH_NAMES.get(arch, arch)
    return f"{name} backbone and neck with Ultralytics' anchor-free Detect head"


def _text(value: Any, where: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise CardError(f"card.{where}: expected non-empty text, got {value!r}")
    value = " ".join(value.split())  # no newlines or tabs: they would break card.md's tables
    if len(value) > _MAX_TEXT:
        raise CardError(f"card.{where}: text longer than {_MAX_TEXT} characters")
    return value


def _count(value: Any, where: str) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0:
        return int(value)
    raise CardError(f"card.{where}: expected a whole number >= 0, got {value!r}")


def _number(value: Any) -> Any:
    """A metric value as a JSON number (NaN/inf become null); NotImplemented when it is not a number at all."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy / 0-d torch scalars
        try:
            value = value.item()
        except (TypeError, ValueError):
            return NotImplemented
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return NotImplemented
    if isinstance(value, numbers.Integral):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def clean_metrics(metrics: Any, where: str) -> dict[str, float | int | None]:
    """Numbers only: non-numeric entries (curves, lists, text) are dropped; identifying names are refused."""
    if metrics is None:
        return {}
    if not isinstance(metrics, dict):
        raise CardError(f"card.{where}: expected a mapping of metric name to number, got {type(metrics).__name__}")
    out = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise CardError(f"card.{where}: metric names must be text, got {key!r}")
        tokens = set(re.split(r"[^a-z0-9]+", key.lower()))
        if tokens & _IDENTIFYING:
            raise CardError(
                f"card.{where}.{key}: metric names like this suggest identifying data, which a card "
                "never holds; report aggregate figures only"
            )
        number = _number(value)
        if number is not NotImplemented:
            out[key] = number
    return out


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """JSON-safe copy of a descriptor (strategy params, privacy figures, export entries): scalars, lists, dicts."""
    if depth > 4:
        raise CardError(f"card.{where}: nested too deeply")
    if isinstance(value, str):
        return _text(value, where)
    if isinstance(value, bool):
        return value
    number = _number(value)
    if number is not NotImplemented:
        return number
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):  # lists, OmegaConf ListConfig
        return [_plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CardError(f"card.{where}: keys must be text, got {k!r}")
            out[k] = _plain(v, f"{where}.{k}", depth + 1)
        return out
    raise CardError(f"card.{where}: {type(value).__name__} cannot be stored on a card")


def _site(entry: Any, i: int) -> dict[str, Any]:
    where = f"sites[{i}]"
    if not isinstance(entry, dict):
        raise CardError(f"card.{where}: expected a mapping with name, examples, status, metrics")
    extra = set(entry) - _SITE_KEYS
    if extra:
        raise CardError(f"card.{where}: unknown field(s) {sorted(extra)}; a site entry holds only {sorted(_SITE_KEYS)}")
    status = _text(entry.get("status"), f"{where}.status")
    if status == "ok":  # the status a site's training reply carries when its update was accepted
        status = "trained"
    if not _STATUS.match(status):
        raise CardError(
            f"card.{where}.status: {status!r}; expected 'trained', 'rejected: <reason>', "
            "'failed: <reason>' or 'budget exhausted'"
        )
    return {
        "name": _text(entry.get("name"), f"{where}.name"),
        "examples": _count(entry.get("examples"), f"{where}.examples"),
        "status": status,
        "metrics": clean_metrics(entry.get("metrics"), f"{where}.metrics"),
    }


def _export(entry: Any, i: int) -> dict[str, Any]:
    where = f"exports[{i}]"
    if not isinstance(entry, dict):
        raise CardError(f"card.{where}: expected a mapping (variant, file, status, ...)")
    extra = set(entry) - _EXPORT_TEXT - _EXPORT_NUMBERS - _EXPORT_FLAGS
    if extra:
        raise CardError(f"card.{where}: unknown field(s) {sorted(extra)}; see docs/export.md for an entry's fields")
    out: dict[str, Any] = {}
    for k, v in entry.items():
        if k in _EXPORT_TEXT:
            out[k] = _text(v, f"{where}.{k}", optional=k == "note")
        elif k in _EXPORT_FLAGS:
            if v is not None and not isinstance(v, bool):
                raise CardError(f"card.{where}.{k}: expected true, false or null, got {v!r}")
            out[k] = v
        else:
            number = _number(v)
            if number is NotImplemented:
                raise CardError(f"card.{where}.{k}: expected a number, got {v!r}")
            out[k] = number
    for k in ("variant", "file", "status"):
        if k not in out:
            raise CardError(f"card.{where}.{k}: missing")
    if not EXPORT_FILE.match(out["file"]):
        raise CardError(f"card.{where}.file: {out['file']!r}; expected exports/<name>.tflite inside the version folder")
    if not _EXPORT_STATUS.match(out["status"]):
        raise CardError(
            f"card.{where}.status: {out['status']!r}; expected 'ok', 'failed: <reason>', "
            "'timed out: <reason>' or 'skipped: <reason>'"
        )
    if out["status"] == "ok" and not re.fullmatch(r"[0-9a-f]{64}", str(out.get("sha256", ""))):
        raise CardError(f"card.{where}.sha256: an export with status ok needs its file's sha256")
    return out


def _parent(value: Any) -> str | None:
    """The version this model was trained from (see server/registry/lineage.py), as `vNNNN`, or null."""
    if value is None:
        return None
    m = re.fullmatch(r"v?(\d+)", value.strip()) if isinstance(value, str) else None
    if m is None:
        raise CardError(f"card.parent: expected a registry version such as v0003, or null; got {value!r}")
    return f"v{int(m.group(1)):04d}"


def _model(given: Any, spec: ModelSpec | None, parameters: int | None) -> dict[str, Any]:
    if given is not None and not isinstance(given, dict):
        raise CardError("card.model: expected a mapping")
    given = dict(given or {})
    extra = set(given) - _MODEL_KEYS
    if extra:
        raise CardError(f"card.model: unknown field(s) {sorted(extra)}; allowed {sorted(_MODEL_KEYS)}")
    if spec is not None:
        truth = {
            "arch": spec.arch,
            "width": spec.width,
            "depth": spec.depth,
            "norm": spec.norm,
            "classes": [spec.names[k] for k in sorted(spec.names)],
        }
        for k, v in truth.items():
            if k in given and given[k] != v:
                raise CardError(f"card.model.{k}: {given[k]!r} but the published weights have {v!r}")
        given.update(truth)
    if parameters is not None:
        given["parameters"] = parameters
    arch = _text(given.get("arch"), "model.arch")
    out = {"arch": arch, "description": _text(given.get("description") or describe_model(arch), "model.description")}
    for k in ("width", "depth"):
        v = _number(given.get(k))
        if v is NotImplemented or v is None:
            raise CardError(f"card.model.{k}: expected a number, got {given.get(k)!r}")
        out[k] = v
    out["norm"] = _text(given.get("norm", "batch"), "model.norm")
    out["classes"] = [_text(c, "model.classes") for c in given.get("classes", ["fracture"])]
    if given.get("parameters") is not None:
        out["parameters"] = _count(given["parameters"], "model.parameters")
    return out


def clean_card(card: dict[str, Any], spec: ModelSpec | None = None, parameters: int | None = None) -> dict[str, Any]:
    """A validated copy of `card` holding only the documented fields, in their documented order.

    `spec` (the weights' spec) fills and cross-checks `model`; registry-owned fields are copied as they are.
    Raises CardError naming the first offending field.
    """
    if not isinstance(card, dict):
        raise CardError(f"card: expected a mapping, got {type(card).__name__}")
    unknown = set(card) - set(SECTIONS)
    if unknown:
        raise CardError(f"card: unknown field(s) {sorted(unknown)}; a card holds only {list(SECTIONS)}")
    rnd = card.get("round")
    if not isinstance(rnd, numbers.Integral) or isinstance(rnd, bool) or rnd < 0:
        raise CardError(f"card.round: expected a round number >= 0, got {rnd!r}")
    strategy = card.get("strategy") or {}
    if not isinstance(strategy, dict) or set(strategy) - {"name", "params"}:
        raise CardError("card.strategy: expected {'name': ..., 'params': {...}}")
    params = strategy.get("params") or {}
    if not isinstance(params, dict):
        raise CardError("card.strategy.params: expected a mapping")
    metrics = card.get("metrics") or {}
    if not isinstance(metrics, dict) or set(metrics) - {"pooled", "per_site"}:
        raise CardError("card.metrics: expected {'pooled': {...}, 'per_site': {site: {...}}}")
    per_site = metrics.get("per_site") or {}
    if not isinstance(per_site, dict):
        raise CardError("card.metrics.per_site: expected a mapping of site name to metrics")
    sites = card.get("sites") or []
    if not isinstance(sites, (list, tuple)):
        raise CardError("card.sites: expected a list of site entries")
    privacy = card.get("privacy")
    if privacy is not None and not isinstance(privacy, dict):
        raise CardError("card.privacy: expected a mapping of privacy figures, or null")
    exports = card.get("exports") or []
    if not isinstance(exports, (list, tuple)):
        raise CardError("card.exports: expected a list of export entries")
    hashes = card.get("hashes") or {}
    if not isinstance(hashes, dict):
        raise CardError("card.hashes: expected a mapping of file name to sha256")
    sites = [_site(s, i) for i, s in enumerate(sites)]
    metrics = {
        "pooled": clean_metrics(metrics.get("pooled"), "metrics.pooled"),
        "per_site": {
            _text(k, "metrics.per_site"): clean_metrics(v, f"metrics.per_site.{k}") for k, v in per_site.items()
        },
    }
    return {
        "run_id": _text(card.get("run_id"), "run_id"),
        "round": int(rnd),
        "strategy": {
            "name": _text(strategy.get("name", "unknown"), "strategy.name"),
            "params": _plain(params, "strategy.params"),
        },
        "config_hash": _text(card.get("config_hash"), "config_hash", optional=True),
        "model": _model(card.get("model"), spec, parameters),
        "sites": sites,
        "metrics": metrics,
        "privacy": None if privacy is None else _plain(privacy, "privacy"),
        "exports": [_export(e, i) for i, e in enumerate(exports)],
        "limitations": limitations(sites, metrics),
        "version": card.get("version"),
        "parent": _parent(card.get("parent")),
        "created": card.get("created"),
        "updated": card.get("updated"),
        "hashes": {str(k): str(v) for k, v in hashes.items()},
    }
