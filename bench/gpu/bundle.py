"""Pack `.gpu/`, everything `bench/gpu/run.sh` needs on a lent GPU machine, within the device tool's 64 MiB carry.

Why: the lent machines run Python 3.12 with PyTorch but without Flower, Ray, Ultralytics, Opacus or Hydra, reach no
package index, and receive only the repository (FracAtlas sits outside it, in ../shared). Run this here (it needs
this venv, FracAtlas and PyPI), then hand `.gpu` to the device call's `carry`:

- `site.tar.xz`: the distributions fracfl's train/simulate path imports, less those the GPU image has (PyTorch,
  NumPy, SciPy, Matplotlib, OpenCV, gRPC...). Pure-Python and abi3 ones are copied from this venv (the versions
  tested here); version-specific binary ones come as Python 3.12 wheels of the same version from PyPI. Ray is cut
  to its core (no Java, RLlib, Data, Serve, Tune, Train, dashboard UI) and its binaries stripped of debug symbols.
  A `fracfl` dist-info carries the subcommand entry points, so `python -m common.cli` works without installing.
- `fracatlas.tar.gz`: FracAtlas train/valid with each image decoded as training decodes it (grey, EXIF orientation
  applied) and re-encoded as a JPEG (quality 90) whose long side is at most --max-side (default 320, the benchmark's
  image size, so the network sees the same pixels up to JPEG rounding); labels, meta.csv and the README (licence).

    .venv/bin/python bench/gpu/bundle.py [--max-side 320] [--quality 90]
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata as md
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import FRACATLAS, REPO

OUT = REPO / ".gpu"
LIMIT = 64 * 2**20  # the device tool's carry limit, working tree included
# What the benchmark's processes import (bench, `fracfl train`, `fracfl simulate`, the sites on Ray workers).
ENTRY_MODULES = [
    "common.cli",
    "common.commands.train",
    "simulations.commands",
    "simulations.runner",
    "client.client_app",
    "server.server_app",
    "server.run",
    "common.engine.centralised",
    "common.privacy.dp_sgd",
    "flwr.simulation",
    "ray",
    "ray._private.workers.default_worker",
    "hydra",
]
# On the GPU image already (its package list, read 2026-11-17); binary ones must come from there.
ON_DEVICE = {
    "torch",
    "numpy",
    "scipy",
    "matplotlib",
    "kiwisolver",
    "fonttools",
    "contourpy",
    "cycler",
    "pyparsing",
    "python-dateutil",
    "pillow",
    "opencv-python",
    "sympy",
    "mpmath",
    "setuptools",
    "cuda-bindings",
    "cuda-pathfinder",
    "nvidia-ml-py",
    "grpcio",
    "psutil",
    "pyyaml",
    "msgpack",
    "markupsafe",
    "charset-normalizer",
    "uvloop",
    "safetensors",
    "six",
    "jinja2",
    "networkx",
    "fsspec",
    "triton",
    "fracfl",
}
RAY_DROP = ["jars", "rllib", "data", "serve", "tune", "train", "llm", "workflow", "dashboard/client"]
RAY_BINARIES = ["core/src/ray/raylet/raylet", "core/src/ray/gcs/gcs_server"]


def norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def needed() -> list[str]:
    """Distributions whose modules the benchmark's path imports (asked of a fresh interpreter of this venv)."""
    code = f"""
import importlib, importlib.metadata as md, json, sys
for m in {ENTRY_MODULES!r}:
    importlib.import_module(m)
from common.cli import build_parser; build_parser()
pd = md.packages_distributions()
print(json.dumps(sorted({{d for n in list(sys.modules) for d in pd.get(n.split('.')[0], [])}})))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def is_versioned_binary(dist: md.Distribution) -> bool:
    return any(".cpython-" in f.name and f.suffix == ".so" for f in dist.files or [])


def copy_dist(dist: md.Distribution, site: Path) -> None:
    """The distribution's files as installed here (its RECORD), without bytecode or scripts outside site-packages."""
    for f in dist.files or []:
        if "__pycache__" in f.parts or f.parts[0] == ".." or f.suffix == ".pyc":
            continue
        src = Path(dist.locate_file(f))
        if src.is_file():
            (site / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, site / f)


def py312_wheel(name: str, version: str, site: Path, tmp: Path) -> None:
    """The Python 3.12 manylinux wheel of `name==version` from PyPI, unpacked into `site`."""
    platforms = [
        x for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64") for x in ("--platform", p)
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            "-d",
            str(tmp),
            f"{name}=={version}",
        ],
        check=True,
    )
    wheel = next(tmp.glob(f"{norm(name).replace('-', '_')}-{version}-*.whl"), None) or next(
        w for w in tmp.glob("*.whl") if norm(w.name.split("-")[0]) == norm(name)
    )
    shutil.unpack_archive(wheel, site, "zip")


def slim(site: Path) -> None:
    """Ray without the parts fracfl never starts; every binary without debug symbols (about a third of its size)."""
    for d in RAY_DROP:
        shutil.rmtree(site / "ray" / d, ignore_errors=True)
    binaries = [*site.rglob("*.so"), *(site / "ray" / f for f in RAY_BINARIES)]
    subprocess.run(["strip", "--strip-unneeded", *map(str, binaries)], check=True)
    for f in RAY_BINARIES:  # unzipping a wheel drops the executable bits
        (site / "ray" / f).chmod(0o755)


def build_site(tmp: Path) -> Path:
    site = tmp / "site"
    site.mkdir()
    wheels = tmp / "wheels"
    wheels.mkdir()
    for name in needed():
        if norm(name) in ON_DEVICE:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:  # a module claimed by no installed distribution's files
            print(f"  {name}: not installed here, left to the GPU image")
            continue
        if is_versioned_binary(dist):
            print(f"  {name} {dist.version}: Python 3.12 wheel from PyPI")
            py312_wheel(name, dist.version, site, wheels)
        else:
            print(f"  {name} {dist.version}: copied from this venv")
            copy_dist(dist, site)
    slim(site)
    info = site / "fracfl-0.1.0.dist-info"  # entry points of `fracfl`; the code itself comes with the repository
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fracfl\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(md.distribution("fracfl").read_text("entry_points.txt") or "")
    return site


def build_data(src: Path, dst: Path, max_side: int, quality: int) -> None:
    """FracAtlas train/valid, images re-encoded at `max_side` as training decodes them; labels unchanged."""
    import cv2

    from common.data.images import read_image

    root = dst / "fracatlas"
    for name in ("data.yaml", "meta.csv", "README.md"):
        (root).mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, root / name)
    with open(src / "meta.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        split = row["split"]
        img = read_image(src / "images" / split / row["image_id"], max_side=max_side)
        out = root / "images" / split / row["image_id"]
        out.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise SystemExit(f"cannot encode {out}")
        out.write_bytes(buf.tobytes())
        label = Path(row["image_id"]).with_suffix(".txt").name
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / "labels" / split / label, root / "labels" / split / label)
    with open(root / "README.md", "a") as f:
        f.write(
            f"\n## This copy\nMade by bench/gpu/bundle.py for a GPU machine: every image decoded as fracfl's "
            f"loader "
            f"does (grey, EXIF orientation applied), long side at most {max_side} px, JPEG quality {quality}. "
            "meta.csv width/height still give the original sizes; labels are normalised, so they still hold.\n"
        )


def tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout.split(b"\0")
    return sum((REPO / f.decode()).stat().st_size for f in files if f and (REPO / f.decode()).is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-side", type=int, default=320)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--data", type=Path, default=FRACATLAS)
    a = p.parse_args()
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("packages:")
        site = build_site(tmp)
        with open(OUT / "site.tar.xz", "wb") as f:  # xz itself: several threads
            tar = subprocess.Popen(["tar", "-C", str(site), "-cf", "-", "."], stdout=subprocess.PIPE)
            subprocess.run(["xz", "-9", "-T0"], stdin=tar.stdout, stdout=f, check=True)
            if tar.wait():
                raise SystemExit("tar failed")
        print("FracAtlas:")
        build_data(a.data, tmp / "data", a.max_side, a.quality)
        with tarfile.open(OUT / "fracatlas.tar.gz", "w:gz") as t:  # gzip: the 7,000 tar headers, not the JPEGs
            t.add(tmp / "data" / "fracatlas", "fracatlas")
    sizes = {f.name: f.stat().st_size for f in sorted(OUT.iterdir())}
    total = sum(sizes.values()) + tracked_bytes()
    for name, size in sizes.items():
        print(f"  .gpu/{name}: {size / 2**20:.1f} MiB")
    print(f"with the tracked files: {total / 2**20:.1f} MiB of the {LIMIT / 2**20:.0f} MiB a device call may carry")
    if total > LIMIT:
        raise SystemExit("too large for one device call: lower --max-side or --quality")


if __name__ == "__main__":
    main()
