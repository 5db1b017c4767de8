"""Typed configuration of edge exports (Hydra group `export/`), read by the server and `fracfl export`."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config import TFLITE_VARIANTS as VARIANTS
from common.errors import ConfigError

CALIBRATED = frozenset({"int8"})


@dataclass
class ExportConfig:
    enabled: bool = True
    every_k: int = 1  # export every k-th published version of a run (the run's last version always)
    variants: list[str] = field(default_factory=lambda: ["fp32", "fp16", "int8"])
    calibration: str | None = None  # local data.yaml/folder for int8 calibration; null: the server's validation data
    calibration_split: str = "val"
    calibration_images: int = 64  # at most this many images calibrate int8
    validation: str | None = None  # data for the equivalence metrics; null: the server's validation data
    validation_split: str = "val"
    imgsz: int | None = None  # input size of the exports; null: the size the model was trained at
    fixed_images: int = 8  # the largest box difference is measured on the first N validation images
    threads: int = 2  # interpreter threads when measuring (and the default on devices)
    timeout: float = 900.0  # seconds for one version's exports; slower is recorded as timed out
    wait_at_end: float = 1800.0  # seconds the server waits for outstanding exports when a run ends

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ConfigError(f"export.variants: {unknown or 'empty'}; choose from {', '.join(VARIANTS)}")
        if self.every_k < 1:
            raise ConfigError(f"export.every_k: expected >= 1, got {self.every_k}")
        if self.imgsz is not None and (self.imgsz < 32 or self.imgsz % 32):
            raise ConfigError(f"export.imgsz: expected a multiple of 32, got {self.imgsz}")
