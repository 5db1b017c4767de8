"""What many tests need: the tiny model, small datasets the tests make themselves, a free loopback port, Flower's own
link state behind a Grid."""

from __future__ import annotations

import secrets
import socket
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from common.nn.model import ModelSpec, build_model
from common.nn.weights import save_weights

if TYPE_CHECKING:
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

NANO = ModelSpec(width=0.125, depth=0.5)  # conf/model/yolov7_nano.yaml: a YOLOv7-tiny at 1/8 width, builds in ~0.1 s
GROUP_NANO = replace(NANO, norm="group")  # as DP-SGD sites train it (BatchNorm mixes the images of a batch)


def save_nano(path: Path, imgsz: int = 128, spec: ModelSpec = NANO, seed: int = 0) -> Path:
    """An untrained `spec` model's weights file, the same in every run (seeded, the global RNG left alone): for tests
    that need *a* model, not a good one. A model drawn afresh each run made such tests pass or fail by chance."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(spec)
    return save_weights(model, spec, path, {"imgsz": imgsz})


def free_port() -> int:
    """A TCP port nothing listens on right now (on loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def link_grid(names: list[str | None]) -> tuple[InMemoryGrid, list[int]]:
    """Flower's own link state with SuperNodes registered as `flwr supernode register KEY --name NAME` does, and the
    Grid a ServerApp would get on it."""
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    nodes = []
    for name in names:
        node = state.create_node("coordinator", "coordinator", secrets.token_bytes(32), 30.0, name=name)
        state.activate_node(node, 30.0)
        nodes.append(node)
    run_id = state.create_run(None, None, None, {}, NOOP_FEDERATION_ID, None, None, "serverapp")
    grid = InMemoryGrid(factory)
    grid.set_run(state.get_run_info(run_ids=[run_id])[0])
    return grid, nodes


def toy_dataset(root: Path, size: int = 64, n: int = 8, positives: int = 6, seed: int = 0) -> Path:
    """Bright rectangles on noise, with a 25 % validation split: a tiny detector learns them in ~100 CPU steps."""
    rng = np.random.default_rng(seed)
    n_val = n // 4
    for i in range(n):
        split = "val" if i < n_val else "train"
        for sub in ("images", "labels"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        img = rng.normal(60, 15, (size, size))
        row = ""
        if i % n < positives and (i % 4 != 3):
            w, h = rng.integers(size // 4, size // 2, 2)
            x, y = rng.integers(2, size - 2 - w), rng.integers(2, size - 2 - h)
            img[y : y + h, x : x + w] += 120
            row = f"0 {(x + w / 2) / size} {(y + h / 2) / size} {w / size} {h / size}\n"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "images" / split / f"{i:03d}.png")
        (root / "labels" / split / f"{i:03d}.txt").write_text(row)
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: {0: fracture}\n")
    return root
