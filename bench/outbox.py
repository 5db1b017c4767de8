"""Each arm's trained weights as one fp16 safetensors file for a device call's `$OUT`.

Why: a device call brings back at most 8 files of at most 16 MiB each; YOLOv7-tiny's fp32 state is 32 MB, its fp16
copy about 16.2 MB. The fp16 file keeps the fracfl weights header (format, spec, metadata) plus the arm, what
the weights are (final, or the last completed round of an arm stopped at the time limit) and the cast, so
`common.nn.weights.read_weights` reads it (load_state_dict casts back to fp32).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open

from common.nn.weights import write_safetensors

MAX_FILE = 16 * 2**20  # the device tool's limit per returned file
# The device tool's 64 MiB for all returned files, less 1.5 MiB for results.md, results.tgz and bench.log: four
# fp16 YOLOv7-tiny files (15.5 MiB each) fit, five do not.
MAX_WEIGHTS_TOTAL = 64 * 2**20 - 3 * 2**19


class TooLarge(RuntimeError):
    """A returned file would exceed the device tool's per-file limit (it would silently not come back)."""


def arm_weights(name: str, run_dir: Path) -> tuple[Path, str] | None:
    """The arm's weights file and what it holds; None when it has none. Central: the run's weights (written when
    training ends). Federated: the server checkpoint's weights (the registry version of the last round when it
    was published, else the checkpoint's own state of the last completed round)."""
    if name == "central":
        path = run_dir / "weights" / "model.safetensors"
        return (path, "final") if path.is_file() else None
    c = checkpoint(run_dir)
    if c is None:
        return None
    path = Path(c["weights"])
    return (path if path.is_absolute() else run_dir / "checkpoint" / path, f"round {c['round']}")


def checkpoint(run_dir: Path) -> dict | None:
    """A federated run's resume point (its last committed round and that round's weights), if it has one."""
    path = run_dir / "checkpoint" / "checkpoint.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_fp16(src: Path, dst: Path, extra: dict[str, str]) -> int:
    """Copy `src` with floating tensors cast to fp16 (integer buffers kept) and `extra` added to its header;
    returns the size in bytes. TooLarge (and no file left) when it exceeds MAX_FILE, or when with the weights files
    already beside it it exceeds MAX_WEIGHTS_TOTAL."""
    with safe_open(str(src), framework="numpy") as f:
        meta = {**(f.metadata() or {}), **extra, "cast": "fp16 (bench/outbox.py)"}
        arrays = {k: _half(f.get_tensor(k)) for k in f.keys()}
    write_safetensors(dst, arrays, meta)
    size = dst.stat().st_size
    total = sum(p.stat().st_size for p in dst.parent.glob("*.fp16.safetensors"))
    if size > MAX_FILE or total > MAX_WEIGHTS_TOTAL:
        dst.unlink()
        raise TooLarge(
            f"{dst.name}: {size / 2**20:.2f} MiB (at most {MAX_FILE / 2**20:.0f} MiB per returned file), "
            f"{total / 2**20:.2f} MiB with the other weights (at most {MAX_WEIGHTS_TOTAL / 2**20:.1f} MiB)"
        )
    return size


def _half(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16) if np.issubdtype(a.dtype, np.floating) else a


def export_arm(name: str, run_dir: Path, out: Path) -> dict:
    """`out/<arm>.fp16.safetensors` from the arm's weights; a dict saying what was written or why not."""
    found = arm_weights(name, run_dir)
    if found is None:
        return {"weights": None, "weights_note": "no weights written (stopped before the run saved any)"}
    src, what = found
    dst = out / f"{name}.fp16.safetensors"
    try:
        size = write_fp16(src, dst, {"arm": name, "holds": what})
    except TooLarge as e:
        return {"weights": None, "weights_note": f"NOT RETURNED: {e}", "weights_error": True}
    return {"weights": dst.name, "weights_holds": what, "weights_mib": round(size / 2**20, 2)}
