"""Dataset discovery, image/label reading and the dataset checker, on inputs built in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FRACATLAS  # $FRACATLAS_DIR, else ../shared/datasets/fracatlas beside the checkout
from PIL import Image, ImageFile, ImageOps

from common.data import (
    CheckReport,
    DatasetSpec,
    check_dataset,
    inspect_image,
    label_path,
    load_spec,
    read_image,
    read_labels,
    validate_labels,
)
from common.data.images import TRUNCATED_NOTE
from common.errors import DataError

GOOD_ROW = "0 0.5 0.5 0.2 0.2\n"


# ---------------------------------------------------------------- helpers


def _radiograph(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """Smooth gradient plus noise: compresses like a real image (so truncation hits real scan data)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a = 60 + 120 * (xx / w) + 40 * np.sin(yy / 7.0) + rng.normal(0, 12, (h, w))
    return np.clip(a, 0, 255).astype(np.uint8)


def _save(path: Path, arr: np.ndarray, mode: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    if mode is not None:
        im = im.convert(mode)
    im.save(path, **kw)
    return path


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _truncated_jpeg(path: Path, cut: int = 100) -> Path:
    _save(path, _radiograph(256, 256), quality=90)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    return path


# ---------------------------------------------------------------- images


def test_exif_orientation_6_rotates_marker(tmp_path):
    arr = np.full((40, 60), 50, np.uint8)
    arr[:8, :8] = 250  # marker at the stored top-left
    path = _save(tmp_path / "rot.jpg", arr, quality=95, exif=_exif(6))
    out, notes = inspect_image(path)
    assert out.shape == (60, 40)  # portrait after turning 90 degrees clockwise
    assert out[:8, -8:].mean() > 200  # stored top-left ends top-right
    assert out[:8, :8].mean() < 100
    assert "EXIF orientation 6 applied" in notes


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    arr = _radiograph(12, 20)
    path = _save(tmp_path / "o.png", arr, exif=_exif(orientation))
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(read_image(path), expected)


def test_grayscale_and_colour_files_give_same_luminance(tmp_path):
    gray = _radiograph()
    rgb = np.repeat(gray[..., None], 3, axis=2)
    for path in (
        _save(tmp_path / "g.jpg", gray, quality=95),
        _save(tmp_path / "c.jpg", rgb, quality=95),
        _save(tmp_path / "c.png", rgb),
    ):
        out, notes = inspect_image(path)
        assert out.dtype == np.uint8 and out.shape == gray.shape, path
        assert out.flags.writeable and out.flags.c_contiguous
        assert np.abs(out.astype(int) - gray).mean() < 3, path
        assert notes == []
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    assert read_image(_save(tmp_path / "red.png", red))[0, 0] == 76  # ITU-R 601 luminance of pure red


def test_palette_and_alpha_modes(tmp_path):
    gray = _radiograph(16, 16)
    assert read_image(_save(tmp_path / "p.png", np.repeat(gray[..., None], 3, 2), mode="P")).shape == (16, 16)
    out, notes = inspect_image(_save(tmp_path / "la.png", gray, mode="LA"))
    np.testing.assert_array_equal(out, gray)
    assert "alpha channel ignored" in notes
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 128)])
    np.testing.assert_array_equal(read_image(_save(tmp_path / "rgba.png", rgba)), gray)


def test_truncated_jpeg_loads_with_note_and_leaves_pil_switch_off(tmp_path):
    path = _truncated_jpeg(tmp_path / "cut.jpg")
    out, notes = inspect_image(path)
    assert out.shape == (256, 256)
    assert notes == [TRUNCATED_NOTE]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(OSError, match="truncated"):  # the process-wide default is still strict
        with Image.open(path) as im:
            im.load()


def test_16bit_png_windowed_to_full_range(tmp_path):
    a = np.linspace(1000, 3000, 64 * 48).reshape(48, 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(a).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    out, notes = inspect_image(path)
    assert out.dtype == np.uint8 and out.shape == (48, 64)
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # monotone mapping
    assert "16-bit image windowed to 8 bits" in notes
    Image.fromarray(np.full((8, 8), 2000, np.uint16)).save(tmp_path / "flat.png")
    assert read_image(tmp_path / "flat.png").max() == 0  # constant image does not divide by zero


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("text.jpg", b"this is not an image\n", "not a recognised image format"),
        ("empty.png", b"", "file is empty"),
        ("half.png", None, "cannot decode image"),
    ],
)
def test_bad_image_files_name_the_file(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is None:  # a PNG cut in half: not tolerated (only JPEG truncation is)
        _save(path, _radiograph())
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match="cannot decode image") as err:
        read_image(path)
    assert str(path) in str(err.value) and reason in str(err.value)
    with pytest.raises(DataError, match="file not found"):
        read_image(tmp_path / "missing.jpg")


def test_max_side_downscales(tmp_path):  # no speed assertion: timings fail on shared, loaded CI machines
    path = _save(tmp_path / "big.jpg", _radiograph(1024, 1280), mode="RGB", quality=90)
    assert read_image(path, max_side=640).shape == (512, 640)
    assert read_image(path, max_side=2000).shape == (1024, 1280)


# ---------------------------------------------------------------- labels


def test_labels_missing_empty_and_valid(tmp_path):
    assert read_labels(tmp_path / "none.txt", nc=1).shape == (0, 5)
    assert read_labels(_write(tmp_path / "empty.txt", ""), nc=1).shape == (0, 5)
    assert read_labels(_write(tmp_path / "blank.txt", "\n  \n"), nc=1).shape == (0, 5)
    boxes = read_labels(_write(tmp_path / "ok.txt", "0 0.5 0.5 0.2 0.4\r\n1 0.25 0.75 0.1 0.1\n"), nc=2)
    assert boxes.dtype == np.float32
    np.testing.assert_allclose(boxes, [[0, 0.5, 0.5, 0.2, 0.4], [1, 0.25, 0.75, 0.1, 0.1]], rtol=1e-6)


def test_tiny_overshoot_is_clipped(tmp_path):
    boxes = read_labels(_write(tmp_path / "edge.txt", "0 0.9 0.5 0.2008 0.2\n"), nc=1)  # right edge 1.0004
    cx, w = boxes[0, 1], boxes[0, 3]
    assert cx + w / 2 == pytest.approx(1.0, abs=1e-6) and cx - w / 2 == pytest.approx(0.7996, abs=1e-6)


@pytest.mark.parametrize(
    "row, fragment",
    [
        ("0 0.5 0.5 0.2", "expected 5 fields 'cls cx cy w h', got 4"),
        ("0 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2", "polygon/segment rows are not supported"),
        ("0 0.5 abc 0.2 0.2", "non-numeric value 'abc'"),
        ("1 0.5 0.5 0.2 0.2", "class id 1 out of range [0, 1)"),
        ("0.5 0.5 0.5 0.2 0.2", "class id 0.5 is not an integer"),
        ("0 0.5 0.5 -0.2 0.2", "width/height must be > 0"),
        ("0 0.5 0.5 0.2 0", "width/height must be > 0"),
        ("0 0.95 0.5 0.2 0.2", "box outside the image"),
        ("0 320 240 50 40", "box outside the image"),  # pixel coordinates instead of normalised
        ("0 nan 0.5 0.2 0.2", "non-finite value"),
    ],
)
def test_bad_label_row_names_file_and_line(tmp_path, row, fragment):
    path = _write(tmp_path / "bad.txt", GOOD_ROW + row + "\n")
    with pytest.raises(DataError) as err:
        read_labels(path, nc=1)
    assert err.value.path == path and err.value.line == 2
    assert str(err.value).startswith(f"{path}:2: ")
    assert fragment in str(err.value)


def test_validate_labels_collects_every_problem(tmp_path):
    path = _write(
        tmp_path / "many.txt",
        GOOD_ROW  # 1 ok
        + "0 0.5 0.5\n"  # 2 field count
        + "x 0.5 0.5 0.2 0.2\n"  # 3 non-numeric
        + "\n"  # 4 blank: ignored
        + "5 0.5 0.5 0.2 0.2\n"  # 5 class out of range
        + "0 0.3 0.3 0.1 0.1\n"  # 6 ok
        + GOOD_ROW  # 7 duplicate of 1: warning, dropped
        + "0 0.5 0.5 0 0.1\n"  # 8 zero width
        + "0 1.2 0.5 0.1 0.1\n",  # 9 outside
    )
    boxes, problems = validate_labels(path, nc=2)
    assert boxes.shape == (2, 5)
    assert [(p.line, p.severity) for p in problems] == [
        (2, "error"), (3, "error"), (5, "error"), (7, "warning"), (8, "error"), (9, "error"),
    ]  # fmt: skip
    assert all(p.path == path for p in problems)
    assert "duplicate of line 1" in problems[3].message
    with pytest.raises(DataError, match=r"many.txt:2: expected 5 fields"):
        read_labels(path, nc=2)
    assert read_labels(_write(tmp_path / "dup.txt", GOOD_ROW * 3), nc=1).shape == (1, 5)


def test_label_file_that_is_binary(tmp_path):
    path = _write(tmp_path / "img.txt", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x80\x81")
    with pytest.raises(DataError, match="not UTF-8 text"):
        read_labels(path, nc=1)


# ---------------------------------------------------------------- dataset specs


def _dataset(root: Path, splits: dict[str, int]) -> Path:
    """images/<split>/<i>.jpg with one good label each."""
    seed = 100  # distinct content per image, so no accidental duplicates
    for split, n in splits.items():
        for i in range(n):
            seed += 1
            _save(root / "images" / split / f"{split}{i}.jpg", _radiograph(32, 32, seed=seed))
            _write(root / "labels" / split / f"{split}{i}.txt", GOOD_ROW)
    return root


def test_label_path_convention():
    assert label_path("/d/images/train/a.b.jpg") == Path("/d/labels/train/a.b.txt")
    assert label_path("/images/x/images/train/a.png") == Path("/images/x/labels/train/a.txt")  # last one only
    assert label_path("/d/pics/a.jpg") == Path("/d/pics/a.txt")


def test_yaml_with_valid_alias_and_names_list(tmp_path):
    _dataset(tmp_path, {"train": 3, "valid": 2})
    _write(tmp_path / "data.yaml", "train: images/train\nval: images/valid\nnames: [fracture]\n")
    for arg in (tmp_path / "data.yaml", tmp_path):
        spec = load_spec(arg)
        assert list(spec.splits) == ["train", "val"] and spec.names == {0: "fracture"} and spec.nc == 1
        assert len(spec.images("train")) == 3
        assert spec.images("valid") == spec.images("val") == spec.splits["val"]
        assert spec.images("val") == sorted(spec.images("val"))
    with pytest.raises(DataError, match=r"data.yaml: no split 'test' \(available: train, val\)"):
        spec.images("test")


def test_yaml_path_key_list_of_dirs_and_names_dict(tmp_path):
    ds = _dataset(tmp_path / "ds", {"a": 2, "b": 3, "v": 1})
    _write(
        tmp_path / "cfg" / "d.yaml",
        "path: ../ds\ntrain: [images/a, images/b]\nval: images/v\nnames: {0: fx, 1: other}\nnc: 2\n",
    )
    spec = load_spec(tmp_path / "cfg" / "d.yaml")
    assert spec.root == ds and spec.nc == 2 and len(spec.images("train")) == 5
    assert spec.label_file(spec.images("val")[0]) == ds / "labels" / "v" / "v0.txt"


def test_yaml_txt_image_list(tmp_path):
    _dataset(tmp_path, {"train": 3})
    imgs = sorted((tmp_path / "images" / "train").iterdir())
    _write(tmp_path / "train.txt", f"./images/train/{imgs[0].name}\n\n{imgs[1]}\nimages/train/{imgs[2].name}\n")
    _write(tmp_path / "data.yaml", "train: train.txt\nval: train.txt\nnames: {0: fracture}\n")
    assert load_spec(tmp_path / "data.yaml").images("train") == imgs
    _write(tmp_path / "train.txt", f"{imgs[0]}\n./images/train/gone.jpg\n")
    with pytest.raises(DataError, match=r"train.txt:2: listed image .*gone.jpg does not exist"):
        load_spec(tmp_path / "data.yaml")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("train: images/train\ndownload: https://example.com/x.zip\nnames: [a]\n", "'download:' key"),
        ("train: images/train\nval: images/nope\nnames: [a]\n", "key 'val': "),
        ("path: nowhere\ntrain: images/train\nnames: [a]\n", "key 'path': folder"),
        ("train: images/train\nnames: [a, b]\nnc: 3\n", "'nc' is 3 but 'names' has 2"),
        ("train: images/train\n", "missing key 'names'"),
        ("names: [a]\n", "no splits"),
        ("train: [images/train\n", "invalid YAML"),
        ("train: images/train\nnames: {0: a, 2: b}\n", "class ids must be 0..1"),
    ],
)
def test_bad_yaml_is_named(tmp_path, text, fragment):
    _dataset(tmp_path, {"train": 1})
    yaml_path = _write(tmp_path / "data.yaml", text)
    with pytest.raises(DataError) as err:
        load_spec(yaml_path)
    assert str(err.value).startswith(str(yaml_path)) and fragment in str(err.value)
    if "nope" in text:
        assert str(tmp_path / "images" / "nope") in str(err.value) and "does not exist" in str(err.value)


def test_folder_layouts(tmp_path):
    tree = _dataset(tmp_path / "tree", {"train": 2, "valid": 1})
    spec = load_spec(tree)
    assert set(spec.splits) == {"train", "valid"} and spec.names == {0: "fracture"}
    assert len(spec.images("val")) == 1

    flat = tmp_path / "flat"  # images/*.jpg + sibling labels/ -> split "all"
    _save(flat / "images" / "a.JPG", _radiograph(16, 16))
    _write(flat / "labels" / "a.txt", GOOD_ROW)
    for arg in (flat, flat / "images"):
        spec = load_spec(arg)
        assert list(spec.splits) == ["all"] and spec.label_file(spec.images("all")[0]).is_file()

    child = tmp_path / "child"  # images with a labels/ child folder
    _save(child / "a.png", _radiograph(16, 16))
    _write(child / "labels" / "a.txt", GOOD_ROW)
    spec = load_spec(child)
    assert spec.label_file(spec.images("all")[0]) == child / "labels" / "a.txt"

    with pytest.raises(DataError, match="without labels"):
        _save(tmp_path / "bare" / "a.png", _radiograph(16, 16))
        load_spec(tmp_path / "bare")
    with pytest.raises(DataError, match="does not exist"):
        load_spec(tmp_path / "nothing")


# ---------------------------------------------------------------- checker


def test_check_dataset_lists_every_problem(tmp_path):
    root = tmp_path / "ds"
    _dataset(root, {"train": 1, "val": 0})  # train0 is good; val duplicates it below
    img_dir, lbl_dir = root / "images", root / "labels"
    _write(img_dir / "train" / "notimg.jpg", b"GIF? no, plain text")  # error: undecodable
    _write(lbl_dir / "train" / "notimg.txt", "")
    _truncated_jpeg(img_dir / "train" / "cut.jpg")  # warning: truncated
    _write(lbl_dir / "train" / "cut.txt", GOOD_ROW)
    _save(img_dir / "train" / "nolabel.jpg", _radiograph(32, 32, seed=5))  # warning: no label file
    _save(img_dir / "train" / "badrows.jpg", _radiograph(32, 32, seed=6))
    _write(lbl_dir / "train" / "badrows.txt", GOOD_ROW + "2 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1\n")  # 2 errors
    _write(lbl_dir / "train" / "orphan.txt", GOOD_ROW)  # error: label without image
    (img_dir / "val").mkdir(parents=True, exist_ok=True)
    _write(img_dir / "val" / "copy.jpg", (img_dir / "train" / "train0.jpg").read_bytes())  # warning: leakage
    _write(lbl_dir / "val" / "copy.txt", "")
    (img_dir / "test").mkdir()  # error: empty split
    _write(root / "data.yaml", "train: images/train\nval: images/val\ntest: images/test\nnames: [fracture]\n")

    report = check_dataset(root, progress=False)
    assert isinstance(report, CheckReport)
    errors = {(p.path.name, p.line) for p in report.errors}
    warnings = {(p.path.name, p.line) for p in report.warnings}
    assert errors == {("notimg.jpg", None), ("badrows.txt", 2), ("badrows.txt", 3), ("orphan.txt", None),
                      ("data.yaml", None)}  # fmt: skip
    assert warnings == {("cut.jpg", None), ("nolabel.jpg", None), ("copy.jpg", None)}
    assert len(report.errors) == 5 and len(report.warnings) == 3
    msgs = {p.path.name: p.message for p in report.problems if p.line is None}
    assert "cannot decode image" in msgs["notimg.jpg"]
    assert msgs["cut.jpg"] == TRUNCATED_NOTE
    assert "treated as a negative image" in msgs["nolabel.jpg"]
    assert "leakage between train and val" in msgs["copy.jpg"]
    assert "without an image" in msgs["orphan.txt"]
    assert "split 'test' has no images" in msgs["data.yaml"]

    c = report.counts
    assert (c["train"].images, c["train"].boxes, c["train"].negatives, c["train"].unreadable) == (5, 3, 1, 1)
    assert (c["val"].images, c["val"].boxes, c["val"].negatives) == (1, 0, 1)
    assert c["test"].images == 0

    text = report.format()
    assert text.index("Errors (5):") < text.index("Warnings (3):") < text.index("Summary:")
    assert "  labels/train/badrows.txt:2: class id 2 out of range [0, 1)" in text
    assert text.rstrip().endswith("5 errors, 3 warnings")
    d = json.loads(json.dumps(report.to_dict()))
    assert d["errors"] == 5 and d["warnings"] == 3 and d["counts"]["train"]["boxes"] == 3 and not d["ok"]


def test_check_dataset_clean_and_unloadable(tmp_path):
    root = _dataset(tmp_path / "ok", {"train": 2, "val": 1})
    report = check_dataset(root, progress=True)
    assert report.ok and report.problems == () and report.counts["train"].boxes == 2
    bad = check_dataset(tmp_path / "missing", progress=False)
    assert len(bad.errors) == 1 and "does not exist" in bad.errors[0].message
    spec = load_spec(root)
    assert isinstance(spec, DatasetSpec) and check_dataset(spec, progress=False).ok


# ---------------------------------------------------------------- FracAtlas (real data, when present)

needs_fracatlas = pytest.mark.skipif(
    not (FRACATLAS / "data.yaml").is_file(), reason=f"FracAtlas not present at {FRACATLAS} (set FRACATLAS_DIR)"
)


@needs_fracatlas
def test_fracatlas_spec_counts():
    spec = load_spec(FRACATLAS)
    assert spec.names == {0: "fracture"}
    assert len(spec.images("train")) == 3164 and len(spec.images("valid")) == 413
    assert all(spec.label_file(p).is_file() for p in spec.images("val")[:50])


@needs_fracatlas
@pytest.mark.slow
def test_fracatlas_check_has_no_errors():
    report = check_dataset(FRACATLAS, progress=False)
    assert report.errors == [], report.format()
    assert report.counts["train"].negatives == 2612 and report.counts["val"].negatives == 335
    assert {p.message for p in report.warnings} <= {TRUNCATED_NOTE}  # the few truncated JPEGs the README names


def test_ordinary_images_are_read_without_the_dicom_stack(tmp_path):
    """A machine that only trains (the lent GPU's bundle has no pydicom) reads PNG and JPEG without importing it;
    a .dcm name still goes to the DICOM reader."""
    import subprocess
    import sys

    import cv2
    import numpy as np

    img = (np.arange(64 * 48) % 251).astype(np.uint8).reshape(48, 64)
    for name in ("a.png", "b.jpg"):
        cv2.imwrite(str(tmp_path / name), img)
    code = (
        "import sys; sys.modules['pydicom'] = None\n"
        "from common.data.images import read_image\n"
        "print([read_image(p).shape for p in sys.argv[1:]])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "a.png"), str(tmp_path / "b.jpg")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "(48, 64), (48, 64)" in done.stdout, done.stderr[-2000:]
    (tmp_path / "c.dcm").write_bytes((tmp_path / "a.png").read_bytes())
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "c.dcm")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and "pydicom" in done.stderr  # the DICOM name is not decided without the reader
