"""Grey-level windowing shared by every image reader: high bit-depth values to the uint8 a viewer shows.

Its own module because both `common.data.images` (16-bit PNG/TIFF) and `common.dicom.pixels` (DICOM without a
VOI) use it, and the DICOM stack must not import the general image reader that itself hands DICOM files to it.
"""

from __future__ import annotations

import numpy as np

WINDOW_PERCENTILES = (0.5, 99.5)  # robust to a few saturated or dead pixels (markers, collimator edges)


def window_to_u8(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """Map high bit-depth values to 0..255 between robust percentiles; (array, whether it was constant)."""
    a = np.nan_to_num(a.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    step = max(1, int(np.sqrt(a.size / 250_000)))  # percentiles of a ~250k-pixel subsample: fast, same result
    lo, hi = (float(v) for v in np.percentile(a[::step, ::step], WINDOW_PERCENTILES))
    if hi <= lo:  # almost all pixels equal: fall back to the full range
        lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8), True
    out = (a - lo) * (255.0 / (hi - lo)) + 0.5
    return np.clip(out, 0, 255).astype(np.uint8), False
