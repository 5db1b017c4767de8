"""Find a dataset's images per split and its class names, from a data.yaml or from the folder layout.

Accepts what people actually have: an Ultralytics data.yaml (dirs, lists of dirs, or .txt image lists), a
folder holding one, an `images/<split>/` + `labels/<split>/` tree, or a flat folder of images with labels.
Nothing is ever downloaded; every missing path is reported with the yaml key that named it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.data.images import IMAGE_SUFFIXES, is_image_file
from common.errors import DataError

DEFAULT_NAMES: dict[int, str] = {0: "fracture"}
YAML_SPLITS = ("train", "val", "test")
_ALIASES = {"val": ("val", "valid", "validation"), "valid": ("valid", "val", "validation"),
            "validation": ("validation", "val", "valid")}  # fmt: skip
_YAML_KEY_ALIASES = {"valid": "val", "validation": "val"}


@dataclass(frozen=True)
class DatasetSpec:
    """Images of each split (sorted) and the class names; labels follow the Ultralytics images->labels rule."""

    root: Path
    splits: dict[str, list[Path]]
    names: dict[int, str]
    source: Path | None = None  # the data.yaml or folder this came from: named in errors
    label_dir: Path | None = field(default=None)  # flat labels folder, when labels are not at label_path(image)

    @property
    def nc(self) -> int:
        return len(self.names)

    def images(self, split: str) -> list[Path]:
        """Images of `split`; `val`, `valid` and `validation` name the same split."""
        for name in _ALIASES.get(split, (split,)):
            if name in self.splits:
                return self.splits[name]
        available = ", ".join(self.splits) or "none"
        raise DataError(self.source or self.root, f"no split {split!r} (available: {available})")

    def label_file(self, image: Path) -> Path:
        """Where the label file of `image` is (it may not exist: that means a negative image)."""
        if self.label_dir is not None:
            return self.label_dir / f"{image.stem}.txt"
        return label_path(image)


def label_path(image: str | Path) -> Path:
    """Ultralytics convention: the last `/images/` path component becomes `/labels/`, the suffix `.txt`."""
    s = os.fspath(image)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in s:
        s = sb.join(s.rsplit(sa, 1))
    return Path(s).with_suffix(".txt")


def load_spec(path: str | Path) -> DatasetSpec:
    """Dataset description from a data.yaml, a folder containing one, or a folder layout (see module doc)."""
    p = Path(os.path.abspath(Path(path).expanduser()))  # absolute, but symlinks kept (labels sit beside them)
    if not p.exists():
        raise DataError(p, "dataset path does not exist")
    if p.is_file():
        if p.suffix.lower() in (".yaml", ".yml"):
            return _from_yaml(p)
        raise DataError(p, "not a dataset: expected a data.yaml file or a dataset folder")
    for name in ("data.yaml", "data.yml"):
        if (p / name).is_file():
            return _from_yaml(p / name)
    if (p / "images").is_dir():
        return _from_images_tree(p)
    return _from_flat_folder(p)


def _from_yaml(yaml_path: Path) -> DatasetSpec:
    data = _read_yaml(yaml_path)
    if data.get("download"):
        raise DataError(
            yaml_path,
            "has a 'download:' key, but fracfl never downloads datasets: put the data in place yourself "
            "and remove the key",
        )
    base = yaml_path.parent
    if data.get("path") not in (None, ""):
        base = Path(str(data["path"])).expanduser()
        base = Path(os.path.abspath(base if base.is_absolute() else yaml_path.parent / base))
        if not base.is_dir():
            raise DataError(yaml_path, f"key 'path': folder {base} does not exist")
    names = _parse_names(data, yaml_path)
    splits: dict[str, list[Path]] = {}
    for key, value in data.items():
        split = _YAML_KEY_ALIASES.get(str(key), str(key))
        if split not in YAML_SPLITS or value in (None, "", []):
            continue
        if split in splits:
            raise DataError(yaml_path, f"key {key!r}: the {split} split is given twice")
        splits[split] = _resolve_split(value, base, yaml_path, str(key))
    if not splits:
        raise DataError(yaml_path, "no splits: expected at least one of the keys train, val, test")
    splits = {k: splits[k] for k in YAML_SPLITS if k in splits}
    return DatasetSpec(root=base, splits=splits, names=names, source=yaml_path)


def _read_yaml(yaml_path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise DataError(yaml_path, f"invalid YAML ({problem})", mark.line + 1 if mark else None) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(yaml_path, f"cannot read dataset yaml ({e})") from None
    if not isinstance(data, dict):
        raise DataError(yaml_path, "expected a mapping with train/val/test and names keys")
    return data


def _parse_names(data: dict[str, Any], yaml_path: Path) -> dict[int, str]:
    raw, nc = data.get("names"), data.get("nc")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1):
        raise DataError(yaml_path, f"key 'nc': expected a positive integer, got {nc!r}")
    if raw is None:
        if nc is None:
            raise DataError(yaml_path, "missing key 'names' (the class names)")
        return {i: f"class{i}" for i in range(nc)}
    if isinstance(raw, (list, tuple)):
        names = {i: str(n) for i, n in enumerate(raw)}
    elif isinstance(raw, dict):
        try:
            names = {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError):
            raise DataError(yaml_path, f"key 'names': class ids must be integers, got {list(raw)}") from None
    else:
        raise DataError(yaml_path, f"key 'names': expected a list or a mapping id -> name, got {raw!r}")
    if not names:
        raise DataError(yaml_path, "key 'names' is empty")
    if sorted(names) != list(range(len(names))):
        raise DataError(yaml_path, f"key 'names': class ids must be 0..{len(names) - 1}, got {sorted(names)}")
    if nc is not None and nc != len(names):
        raise DataError(yaml_path, f"key 'nc' is {nc} but 'names' has {len(names)} entries")
    return dict(sorted(names.items()))


def _resolve_split(value: Any, base: Path, yaml_path: Path, key: str) -> list[Path]:
    entries = value if isinstance(value, (list, tuple)) else [value]
    images: set[Path] = set()
    for entry in entries:
        if not isinstance(entry, (str, os.PathLike)):
            raise DataError(
                yaml_path, f"key {key!r}: expected a folder, a .txt list of images, or a list of those; got {entry!r}"
            )
        p = Path(entry).expanduser()
        p = Path(os.path.abspath(p if p.is_absolute() else base / p))
        if p.is_dir():
            images.update(_list_images(p, recursive=True))
        elif p.is_file() and p.suffix.lower() == ".txt":
            images.update(_read_image_list(p))
        elif p.is_file():
            raise DataError(yaml_path, f"key {key!r}: {p} is neither a folder nor a .txt list of images")
        else:
            raise DataError(yaml_path, f"key {key!r}: {p} does not exist")
    return sorted(images)


def _read_image_list(txt: Path) -> list[Path]:
    """Image paths listed one per line; relative ones are relative to the list file's folder."""
    try:
        lines = txt.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(txt, f"cannot read image list ({e})") from None
    out = []
    for lineno, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry:
            continue
        p = Path(entry).expanduser()
        p = Path(os.path.abspath(p if p.is_absolute() else txt.parent / p))
        if not is_image_file(p):
            raise DataError(txt, f"{entry}: not an image file name (accepted: {_suffixes()})", lineno)
        if not p.is_file():
            raise DataError(txt, f"listed image {p} does not exist", lineno)
        out.append(p)
    return out


def _from_images_tree(root: Path) -> DatasetSpec:
    images_dir = root / "images"
    subdirs = sorted(d for d in images_dir.iterdir() if d.is_dir())
    loose = _list_images(images_dir, recursive=False)
    if subdirs and loose:
        raise DataError(images_dir, "has both image files and split subfolders: move the images into a split folder")
    if subdirs:
        splits = {d.name: _list_images(d, recursive=True) for d in subdirs}
    elif loose:
        splits = {"all": loose}
    else:
        raise DataError(images_dir, "no images and no split subfolders (expected images/<split>/*.jpg)")
    return DatasetSpec(root=root, splits=splits, names=dict(DEFAULT_NAMES), source=root)


def _from_flat_folder(folder: Path) -> DatasetSpec:
    images = _list_images(folder, recursive=False)
    if not images:
        raise DataError(
            folder, "not a dataset: no data.yaml, no images/ folder and no image files "
            f"(accepted extensions: {_suffixes()})",
        )  # fmt: skip
    if folder.name == "images" and (folder.parent / "labels").is_dir():
        return DatasetSpec(folder.parent, {"all": images}, dict(DEFAULT_NAMES), source=folder)
    if (folder / "labels").is_dir():
        return DatasetSpec(folder, {"all": images}, dict(DEFAULT_NAMES), source=folder, label_dir=folder / "labels")
    raise DataError(folder, "folder of images without labels: expected a sibling ../labels or a child labels/ folder")


def _list_images(folder: Path, *, recursive: bool) -> list[Path]:
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        out.extend(Path(dirpath, f) for f in filenames if is_image_file(f))
    return sorted(out)


def _suffixes() -> str:
    return " ".join(sorted(IMAGE_SUFFIXES))
