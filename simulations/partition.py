"""Turn one dataset into N simulated hospital datasets, without copying a single image.

Before a real federation, research coordinators rehearse it on simulated sites. Each site gets a folder with
an Ultralytics `data.yaml` whose `train`/`val` keys name `.txt` lists of absolute image paths; labels are found
next to the images by the usual images/ -> labels/ rule, so any loader (ours or Ultralytics') reads a site as
an ordinary dataset. Kinds (see docs/partitioning.md):

- `synthetic`: render one dataset per site profile (`common.synth`), the default demo federation.
- `column`: non-IID by metadata flags (e.g. FracAtlas body regions -> hand clinic, trauma unit, ...).
- `dirichlet`: label skew, fracture prevalence per site drawn from Dir(alpha).
- `iid`: an even random split, the baseline that every non-IID result is compared with.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from common.data.labels import read_labels
from common.data.spec import DatasetSpec, load_spec
from common.errors import ConfigError, DataError
from common.utils.progress import progress_bar
from simulations.partition_summary import Site, markdown_table, write_partition_summary
from simulations.partitioners import assign_by_columns, assign_dirichlet, assign_iid, dirichlet_proportions

__all__ = ["KINDS", "PartitionConfig", "Site", "make_sites", "markdown_table", "write_partition_summary"]

KINDS = ("synthetic", "column", "dirichlet", "iid")
SPLITS = ("train", "val")
MIN_TRAIN_PER_SITE = 4  # dirichlet tops every site up to this many training images (fewer if the source is tiny)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TRUE, _FALSE = {"1", "1.0", "true", "yes", "y", "t"}, {"0", "0.0", "false", "no", "n", "f", ""}


@dataclass
class PartitionConfig:
    """How to build the simulated sites; every invalid value raises ConfigError naming its field."""

    kind: str = "synthetic"  # synthetic | column | dirichlet | iid
    source: str | None = None  # dataset (data.yaml or folder) for column/dirichlet/iid
    sites: int = 3  # number of sites (dirichlet/iid/synthetic: profiles are used in turn); column: len(column_groups)
    profiles: list[str] = field(default_factory=lambda: ["general_hospital", "trauma_center", "rural_clinic"])
    images_per_site: int = 60  # synthetic
    size: int = 512  # synthetic image side
    column_groups: dict[str, list[str]] = field(default_factory=dict)  # column: site -> meta.csv 0/1 flag columns
    shared_column: str | None = "mixed"  # column: rows with this flag (or matching no group) are dealt to all sites
    meta: str | None = None  # column: metadata CSV (default: meta.csv beside the source data.yaml)
    alpha: float = 0.5  # dirichlet concentration (smaller = more skew)
    seed: int = 0


def make_sites(cfg: PartitionConfig, out: Path, progress: bool = True) -> list[Site]:
    """Write the site datasets under `out` (new or empty folder) plus sites.csv/md/png and partition.yaml.

    The same config always gives byte-identical files, so a simulation can be rerun on exactly the same sites.
    Every site keeps its own local validation split (the source's val images are partitioned too).
    """
    _check_config(cfg)
    out = Path(os.path.abspath(Path(out).expanduser()))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"out: {out} exists and is not an empty folder; choose a new folder or delete it")
    if cfg.kind == "synthetic":
        sites = _synthetic_sites(cfg, out, progress)
    else:
        spec = load_spec(_source_path(cfg))
        if spec.label_dir is not None:  # site lists find labels by images/ -> labels/, which this layout lacks
            raise DataError(
                spec.source or spec.root,
                f"labels sit in {spec.label_dir}, not in a labels/ folder beside images/: site image lists could not "
                "find them; move the images into images/ (and labels into labels/) or write a data.yaml",
            )
        images = {split: spec.images(split) for split in SPLITS}
        positive = _positive_images(spec, [p for split in SPLITS for p in images[split]], progress)
        if cfg.kind == "column":
            parts = _column_parts(cfg, spec, images)
        else:
            parts = _random_parts(cfg, images, positive)
        sites = [
            _write_site(out / "sites" / name, name, site_parts, positive, spec) for name, site_parts in parts.items()
        ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "partition.yaml").write_text(yaml.safe_dump(_plain(asdict(cfg)), sort_keys=False))
    write_partition_summary(sites, out)
    return sites


# --- validation -------------------------------------------------------------------------------------------


def _check_config(cfg: PartitionConfig) -> None:
    if cfg.kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}; got {cfg.kind!r}")
    if not _is_int(cfg.seed) or cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {cfg.seed!r}")
    if cfg.kind == "synthetic":
        if isinstance(cfg.profiles, str) or not cfg.profiles:
            raise ConfigError(f"profiles must be a non-empty list of site preset names, got {cfg.profiles!r}")
        return
    if cfg.source in (None, ""):
        raise ConfigError(f"source is required for kind {cfg.kind!r}: a data.yaml or dataset folder to partition")
    if cfg.kind in ("dirichlet", "iid") and (not _is_int(cfg.sites) or cfg.sites < 1):
        raise ConfigError(f"sites must be an integer >= 1, got {cfg.sites!r}")
    if cfg.kind == "dirichlet":
        if isinstance(cfg.alpha, bool) or not isinstance(cfg.alpha, (int, float)) or not (0 < cfg.alpha < math.inf):
            raise ConfigError(f"alpha must be a finite number > 0 (smaller = more label skew), got {cfg.alpha!r}")
    if cfg.kind == "column":
        _check_column_groups(cfg)


def _check_column_groups(cfg: PartitionConfig) -> None:
    groups = cfg.column_groups
    if not isinstance(groups, Mapping) or not groups:
        raise ConfigError(
            "column_groups must map site names to meta.csv flag columns, e.g. "
            "{hand_clinic: [hand], trauma_unit: [leg], hip_shoulder: [hip, shoulder]}"
        )
    for name, columns in groups.items():
        _check_site_name(name, "column_groups")
        if isinstance(columns, str) or not isinstance(columns, Sequence) or not columns:
            raise ConfigError(f"column_groups[{name!r}] must be a non-empty list of column names, got {columns!r}")
    if cfg.shared_column is not None and not isinstance(cfg.shared_column, str):
        raise ConfigError(f"shared_column must be a column name or null, got {cfg.shared_column!r}")


def _check_site_name(name: object, key: str) -> None:
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise ConfigError(
            f"{key}: site name {name!r} is not a safe folder name (letters, digits, '_', '-', '.'; "
            "starting with a letter or digit; at most 64 characters)"
        )


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _source_path(cfg: PartitionConfig) -> Path:
    p = Path(os.path.abspath(Path(str(cfg.source)).expanduser()))
    if not p.exists():
        raise ConfigError(f"source: {p} does not exist (expected a data.yaml or a dataset folder)")
    return p


def _plain(value: object) -> object:
    """Config values as plain YAML types (Hydra containers and paths included)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (isinstance(value, Sequence) and not isinstance(value, str)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- kinds ------------------------------------------------------------------------------------------------

SplitParts = dict[str, list[Path]]  # split -> images of one site


def synthetic_profiles(cfg: PartitionConfig) -> list:
    """`cfg.sites` site profiles: the listed presets in turn; repeats get a number (trauma_center_2, ...)."""
    from dataclasses import replace

    from common.synth import get_profile

    names = [str(cfg.profiles[i % len(cfg.profiles)]) for i in range(cfg.sites)]
    return [
        replace(get_profile(n), name=n if i < len(cfg.profiles) else f"{n}_{i // len(cfg.profiles) + 1}")
        for i, n in enumerate(names)
    ]


def _synthetic_sites(cfg: PartitionConfig, out: Path, progress: bool) -> list[Site]:
    from common.synth import generate_dataset  # heavy (cv2, renderer): only when rendering

    data = out / "data"
    profiles = synthetic_profiles(cfg)
    generate_dataset(data, profiles, cfg.images_per_site, cfg.size, seed=cfg.seed, progress=progress)
    specs = {p.name: load_spec(data / p.name / "data.yaml") for p in profiles}
    sites = []
    for name, spec in specs.items():
        parts = {split: spec.images(split) for split in SPLITS}
        positive = _positive_images(spec, parts["train"] + parts["val"], progress, f"labels {name}")
        sites.append(_site(name, data / name / "data.yaml", parts, positive))
    return sites


def _column_parts(cfg: PartitionConfig, spec: DatasetSpec, images: dict[str, list[Path]]) -> dict[str, SplitParts]:
    groups = {str(k): [str(c) for c in v] for k, v in cfg.column_groups.items()}
    meta_path = _meta_path(cfg, spec)
    wanted = sorted(
        {c for cols in groups.values() for c in cols} | ({cfg.shared_column} if cfg.shared_column else set())
    )
    meta = _read_meta(meta_path, wanted, groups, cfg.shared_column)
    parts: dict[str, SplitParts] = {name: {} for name in groups}
    for split in SPLITS:
        imgs = images[split]
        ids, flags = [], []
        missing = []
        for img in imgs:
            row = meta.get(img.name, meta.get(img.stem))
            if row is None:
                missing.append(img)
                continue
            ids.append(img.name)
            flags.append(row)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(meta_path, f"no row with image_id {missing[0].name} for image {missing[0]}{more}")
        assignment = assign_by_columns(ids, flags, groups, cfg.shared_column, cfg.seed)
        for name, positions in assignment.items():
            parts[name][split] = [imgs[i] for i in positions]
    for name, split_parts in parts.items():
        if not split_parts["train"]:
            raise ConfigError(
                f"column_groups[{name!r}]: columns {groups[name]} select no training image in {meta_path}"
            )
    return parts


def _random_parts(
    cfg: PartitionConfig, images: dict[str, list[Path]], positive: dict[Path, bool]
) -> dict[str, SplitParts]:
    n_train = len(images["train"])
    if n_train < cfg.sites:
        raise ConfigError(f"sites: {cfg.sites} sites but the source has only {n_train} training images")
    rng = np.random.default_rng([cfg.seed, KINDS.index(cfg.kind)])
    names = [f"site_{i}" for i in range(cfg.sites)]
    if cfg.kind == "dirichlet":
        # one draw per class, shared by train and val, so a site's validation set looks like its training set
        proportions = dirichlet_proportions(2, cfg.sites, cfg.alpha, rng)
    parts: dict[str, SplitParts] = {name: {} for name in names}
    for split in SPLITS:
        imgs = images[split]
        if cfg.kind == "iid":
            chunks = assign_iid(len(imgs), cfg.sites, rng)
        else:
            labels = [int(positive[p]) for p in imgs]
            min_n = MIN_TRAIN_PER_SITE if split == "train" else 1
            chunks = assign_dirichlet(labels, proportions, rng, min_per_site=min_n)
        for name, chunk in zip(names, chunks):
            parts[name][split] = [imgs[i] for i in chunk]
    return parts


# --- I/O --------------------------------------------------------------------------------------------------


def _meta_path(cfg: PartitionConfig, spec: DatasetSpec) -> Path:
    if cfg.meta not in (None, ""):
        return Path(os.path.abspath(Path(str(cfg.meta)).expanduser()))
    src = spec.source or spec.root
    return (src if src.is_dir() else src.parent) / "meta.csv"


def _read_meta(
    path: Path, columns: list[str], groups: dict[str, list[str]], shared: str | None
) -> dict[str, dict[str, bool]]:
    """image_id -> {column: flag} for the wanted 0/1 columns; a bad cell is reported with its line."""
    if not path.is_file():
        raise DataError(path, "metadata CSV not found: kind 'column' needs one (set 'meta' to its path)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if "image_id" not in header:
                raise DataError(path, f"no 'image_id' column (columns: {', '.join(header) or 'none'})")
            for col in columns:
                if col not in header:
                    key = "shared_column" if col == shared else f"column_groups[{_owner(col, groups)!r}]"
                    raise ConfigError(f"{key}: column {col!r} is not in {path} (columns: {', '.join(header)})")
            meta: dict[str, dict[str, bool]] = {}
            for lineno, row in enumerate(reader, start=2):
                image_id = (row.get("image_id") or "").strip()
                if not image_id:
                    raise DataError(path, "empty image_id", lineno)
                if image_id in meta:
                    raise DataError(path, f"image_id {image_id} appears twice", lineno)
                meta[image_id] = {c: _flag(row.get(c), c, path, lineno) for c in columns}
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(path, f"cannot read metadata CSV ({e})") from None
    return meta


def _owner(column: str, groups: dict[str, list[str]]) -> str:
    return next(name for name, cols in groups.items() if column in cols)


def _flag(value: str | None, column: str, path: Path, lineno: int) -> bool:
    v = (value or "").strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise DataError(path, f"column {column!r}: expected a 0/1 flag, got {value!r}", lineno)


def _positive_images(
    spec: DatasetSpec, images: list[Path], progress: bool, what: str = "reading labels"
) -> dict[Path, bool]:
    """Image -> has at least one fracture box. Labels are validated: a bad row stops with its file and line."""
    out = {}
    with progress_bar(progress and len(images) > 200) as bar:
        task = bar.add_task(what, total=len(images))
        for img in images:
            out[img] = len(read_labels(spec.label_file(img), spec.nc)) > 0
            bar.advance(task)
    return out


def _write_site(folder: Path, name: str, parts: SplitParts, positive: dict[Path, bool], spec: DatasetSpec) -> Site:
    folder.mkdir(parents=True)
    for split in SPLITS:
        (folder / f"{split}.txt").write_text("".join(f"{p}\n" for p in sorted(parts[split])))
    # relative list paths: load_spec and Ultralytics both resolve them against this file's folder
    content = {"train": "train.txt", "val": "val.txt", "names": dict(spec.names)}
    (folder / "data.yaml").write_text(yaml.safe_dump(content, sort_keys=False))
    return _site(name, folder / "data.yaml", parts, positive)


def _site(name: str, data_yaml: Path, parts: SplitParts, positive: dict[Path, bool]) -> Site:
    return Site(
        name=name, data_yaml=data_yaml, n_train=len(parts["train"]), n_val=len(parts["val"]),
        train_positive=sum(positive[p] for p in parts["train"]), val_positive=sum(positive[p] for p in parts["val"]),
    )  # fmt: skip
