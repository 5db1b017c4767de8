"""Attenuation line integrals: the sum of mu * path length along each detector pixel's ray.

Parallel-beam projection of analytic shapes keeps this exact and fast: the path through an
elliptic cylinder of radius R at lateral offset v is 2*sqrt(R^2 - v^2), so a hollow bone is
the outer minus the inner (medullary) chord, and each shape is evaluated only in its bounding box.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from common.synth.anatomy import Anatomy, Bone, Envelope
from common.synth.fracture import FracturePlan, LimbMotion

MU_FAT = 0.018
MU_MUSCLE = 0.022
MU_CORTEX = 0.058
"""Linear attenuation coefficients (1/mm) at an extremity beam's effective energy (~55 keV)."""
EPIPHYSIS_CORTEX_MM = 0.7
TRABECULAR_DENSITY = (0.08, 0.25)
"""Bone volume fraction of the medulla in the shaft (mostly marrow) and in the epiphyses."""
TEXEL_MM = 0.3
AXIAL_STEP_MM = 0.2
ENVELOPE_STEP_MM = 0.5
BEND_MM = 15.0
"""Soft tissue bends over +-BEND_MM around a displaced break."""


def attenuation_map(
    anatomy: Anatomy,
    plans: list[FracturePlan],
    motion: LimbMotion | None,
    to_px: np.ndarray,
    size: int,
    pixel_mm: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Total attenuation (dimensionless, mu*path summed) per pixel of the limb, fractures included."""
    total = np.zeros((size, size), np.float32)
    for envelope in anatomy.envelopes:
        _add_soft_tissue(total, envelope, motion, to_px, pixel_mm)
    texture = _texture_image(size, pixel_mm, rng)
    plan_of = {p.bone_index: p for p in plans}
    for index, bone in enumerate(anatomy.bones):
        base = motion.bone_motion(index, bone) if motion is not None else np.eye(3)
        _add_bone(total, bone, base, plan_of.get(index), texture, to_px, pixel_mm)
    return total


def _add_soft_tissue(
    total: np.ndarray, env: Envelope, motion: LimbMotion | None, to_px: np.ndarray, pixel_mm: float
) -> None:
    """Union (max) of the tissue path: overlapping envelopes are one body, not two."""
    px_to_limb = np.linalg.inv(to_px)
    moves = [np.eye(3)] if motion is None else [np.eye(3), motion.matrix]
    window = _window(_segment_px(env.p0, env.p1, moves, to_px), max(env.radii) / pixel_mm + 2, total.shape[0])
    if window is None:
        return
    u, v = _local_coords(env.frame() @ px_to_limb, window)
    if motion is not None and (motion.digit == 0 or env.digit == motion.digit):
        # Beyond a displaced break the tissue follows the limb, bending smoothly across the cut.
        um, vm = _local_coords(env.frame() @ np.linalg.inv(motion.matrix) @ px_to_limb, window)
        cut = np.array([*motion.axis, -motion.axis @ motion.origin])
        t = np.clip(_affine(cut @ px_to_limb, *_centres(window)) / (2 * BEND_MM) + 0.5, 0.0, 1.0)
        t = t * t * (3 - 2 * t)
        u, v = u + t * (um - u), v + t * (vm - v)
    r = _lookup(env.radius(_axis_grid(env.length, ENVELOPE_STEP_MM))[None, :, None], u, ENVELOPE_STEP_MM)
    v2 = np.square(v)
    tissue = (2 * env.depth) * (MU_FAT * _chord(r, v2) + (MU_MUSCLE - MU_FAT) * _chord(0.8 * r, v2))
    np.maximum(total[window], tissue, out=total[window])


def _add_bone(
    total: np.ndarray,
    bone: Bone,
    base: np.ndarray,
    plan: FracturePlan | None,
    texture: np.ndarray,
    to_px: np.ndarray,
    pixel_mm: float,
) -> None:
    """Add one bone (moved by `base`), or each fragment of it when it is broken."""
    frame = bone.frame()
    pieces = plan.fragments() if plan is not None else [("whole", np.eye(3))]
    moves = [base @ np.linalg.inv(frame) @ m @ frame for _, m in pieces]
    window = _window(
        _segment_px(bone.p0, bone.p1, moves, to_px), max(*bone.ends, *bone.shaft) / pixel_mm + 2, total.shape[0]
    )
    if window is None:
        return
    u, v = _local_coords(frame @ np.linalg.inv(base) @ np.linalg.inv(to_px), window)
    table = _axial_table(bone)
    if plan is None:
        total[window] += _bone_attenuation(bone, table, u, v, texture[window])
        return
    for kind, m in pieces:
        back = np.linalg.inv(m).astype(np.float32)
        uf = back[0, 0] * u + back[0, 1] * v + back[0, 2]
        vf = back[1, 0] * u + back[1, 1] * v + back[1, 2]
        total[window] += _bone_attenuation(bone, table, uf, vf, texture[window]) * plan.mask(kind, uf, vf, pixel_mm)


def _axial_table(bone: Bone) -> np.ndarray:
    """The bone's cross-section sampled every AXIAL_STEP_MM from u = -1 mm, as a 1xNx4 image.

    Channels: outer radius, medullary radius, trabecular density (thinned where the epiphysis is
    flat along the beam), texture gain. Pixels then
    look their section up with one cv2.remap instead of re-evaluating the flare formulas.
    """
    u = _axis_grid(bone.length, AXIAL_STEP_MM)
    r, epi = bone.radius(u)
    cortex = bone.cortex + (EPIPHYSIS_CORTEX_MM - bone.cortex) * epi
    shaft_density, end_density = TRABECULAR_DENSITY
    density = shaft_density + (end_density - shaft_density) * epi
    keep = np.ones_like(u)
    if bone.physis:
        # Growth plates: cartilage bands about half an epiphysis width from each end.
        plates = np.exp(-np.square((u - 0.55 * bone.ends[0]) / 0.8)) + np.exp(
            -np.square((bone.length - u - 0.55 * bone.ends[1]) / 0.8)
        )
        keep = 1.0 - 0.8 * np.minimum(plates, 1.0)
    inner = np.maximum(r - cortex * keep, 0.0)
    medulla = density * keep * (1.0 - bone.flat_ends * epi)
    return np.stack([r, inner, medulla, medulla * (0.08 + 0.17 * epi)], axis=-1)[None].astype(np.float32)


def _bone_attenuation(bone: Bone, table: np.ndarray, u: np.ndarray, v: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """Excess attenuation of bone over the soft tissue it displaces, at bone-local (u, v)."""
    section = _lookup(table, u, AXIAL_STEP_MM)
    v2 = np.square(v)
    outer = _chord(section[..., 0], v2)
    inner = _chord(section[..., 1], v2)
    medulla = inner * (section[..., 2] + section[..., 3] * texture)
    return (2 * bone.depth * (MU_CORTEX - MU_MUSCLE)) * (outer - inner + medulla)


def _axis_grid(length: float, step: float) -> np.ndarray:
    """Axial sample positions from 1 mm before the start to 1 mm past the end."""
    return np.arange(-1.0, length + 1.0, step, dtype=np.float32)


def _lookup(table: np.ndarray, u: np.ndarray, step: float) -> np.ndarray:
    """Linear interpolation of a 1xNxC table sampled on `_axis_grid` at positions u (0 beyond it)."""
    return cv2.remap(table, (u + 1.0) * (1 / step), np.zeros_like(u), cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def _chord(r: np.ndarray, v2: np.ndarray) -> np.ndarray:
    """Half the path length through a cylinder of radius r at squared lateral offset v2."""
    return np.sqrt(np.maximum(np.square(r) - v2, 0.0))


def _segment_px(p0, p1, moves: list[np.ndarray], to_px: np.ndarray) -> np.ndarray:
    """Pixel positions of a segment's ends under each of its possible motions."""
    ends = np.array([[*p0, 1.0], [*p1, 1.0]])
    return np.concatenate([ends @ (to_px @ m)[:2].T for m in moves])


def _window(points_px: np.ndarray, pad_px: float, size: int) -> tuple[slice, slice] | None:
    """Bounding box of points padded by `pad_px`, clipped to the image (None if outside)."""
    x0, y0 = np.floor(points_px.min(axis=0) - pad_px).astype(int)
    x1, y1 = np.ceil(points_px.max(axis=0) + pad_px).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _local_coords(px_to_local: np.ndarray, window: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """Local (u, v) mm of every pixel centre in the window."""
    x, y = _centres(window)
    return _affine(px_to_local[0], x, y), _affine(px_to_local[1], x, y)


def _centres(window: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = window
    return np.arange(cols.start + 0.5, cols.stop, dtype=np.float32), np.arange(
        rows.start + 0.5, rows.stop, dtype=np.float32
    )


def _affine(row: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """a*x + b*y + c over a grid of pixel centres, by one broadcast."""
    a, b, c = row.astype(np.float32)
    return (x * a)[None, :] + (y * b + c)[:, None]


def _texture_image(size: int, pixel_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Trabecular texture for the whole image: the bank at the pixel size, tiled, randomly shifted.

    Sampled in image space (limbs run roughly vertically) rather than per bone: no per-fragment
    resampling, and the texture statistics are the same.
    """
    tile = max(int(round(_texture_bank().shape[0] * TEXEL_MM / pixel_mm)), 1)
    oy, ox = rng.integers(0, tile, size=2)
    return _tiled_texture(size, tile)[oy : oy + size, ox : ox + size]


@lru_cache(maxsize=8)
def _tiled_texture(size: int, tile: int) -> np.ndarray:
    """The bank resized to `tile` px and tiled to cover size + tile (cached: few sizes recur)."""
    bank = _texture_bank()
    small = cv2.resize(bank, (tile, tile), interpolation=cv2.INTER_AREA if tile < bank.shape[0] else cv2.INTER_LINEAR)
    reps = size // tile + 2
    tiled = np.tile(small, (reps, reps))
    tiled.flags.writeable = False
    return tiled


@lru_cache(maxsize=1)
def _texture_bank() -> np.ndarray:
    """Seamless band-passed noise, elongated along y like trabeculae along a limb; fixed seed, built once."""
    n, pad = 512, 32
    noise = np.random.default_rng(20240611).standard_normal((n, n)).astype(np.float32)
    tiled = np.pad(noise, pad, mode="wrap")  # blur a wrapped copy so the tile stays seamless
    fine = cv2.GaussianBlur(tiled, (0, 0), sigmaX=0.9, sigmaY=1.6)
    coarse = cv2.GaussianBlur(tiled, (0, 0), sigmaX=4.0, sigmaY=5.0)
    band = (fine - coarse)[pad : pad + n, pad : pad + n]
    return (band / band.std()).astype(np.float32)
