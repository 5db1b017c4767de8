"""One synthetic radiograph: pose, collimation, fractures, exposure physics, site processing.

The chain mirrors a real DR system: attenuation line integrals -> photons I0*exp(-mu*L) plus
scatter -> quantum (Poisson) and read-out noise -> log -> detector value at the site's bit depth
-> vendor processing (window, gamma, unsharp mask) into a display image with bone bright.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from common.errors import ConfigError
from common.synth.anatomy import BODY_PARTS, Anatomy, build_anatomy
from common.synth.fracture import Fracture, FracturePlan, LimbMotion, fracture_box, plan_displaced, plan_fracture
from common.synth.profiles import FRACTURE_TYPES, SiteProfile
from common.synth.projection import attenuation_map

LEAD = 9.0
"""Attenuation of the lead laterality marker: it blocks the beam."""
MARKER_HOLDER = 0.3
SCATTER = 0.05
"""Scatter reaching the detector through the grid, as a share of the photons the limb removes."""
HEEL = 0.06
"""Anode heel effect: +-6 % exposure gradient along the tube axis."""
ATT_OFFSET, ATT_RANGE = 0.5, 8.0
"""Detector log-signal mapping: measured attenuation -ATT_OFFSET..ATT_RANGE-ATT_OFFSET spans full scale."""
EXACT_POISSON_BELOW = 50.0
"""Below this expected count Poisson noise is drawn exactly; above, its normal approximation (faster)."""
SIZE_RANGE = (64, 4096)
EQUALIZE_MM = 20.0
"""Scale of the local mean removed by soft-tissue equalisation."""
EQUALIZE_KNEE = 0.6
"""Equalisation only compresses local attenuation above this (thick parts), sparing hands."""
AIR_ATT = 0.05
"""Attenuation shown black: just above air, so the noisy background is dark."""


@dataclass
class SynthImage:
    """A rendered radiograph and its ground truth."""

    display: np.ndarray
    """HxW uint8 or uint16 (site's png_bits) processed image, bone bright; what the PNG holds."""
    detector: np.ndarray
    """HxW uint16 log-signal at the site's bit depth, high = attenuating (MONOCHROME2 sense)."""
    fractures: list[Fracture]
    body_part: str
    laterality: str
    pixel_spacing_mm: float
    bit_depth: int
    age_years: int
    window: tuple[float, float]
    """VOI window (centre, width) in detector values, for viewers of the unprocessed DICOM pixels."""


def render_radiograph(
    profile: SiteProfile,
    rng: np.random.Generator,
    size: int = 512,
    *,
    body_part: str | None = None,
    fracture: bool | str | None = None,
) -> SynthImage:
    """Render one size x size radiograph for a site.

    body_part and fracture default to the site's case mix; fracture=False renders the same
    anatomy, pose and noise seed intact, True forces a fracture and a type name forces that type
    (placed on a bone inside the field), which is how tests and figures compare a fracture
    against the intact bone.
    """
    _check_args(size, body_part, fracture)
    # Independent streams per stage, so forcing or removing a fracture leaves the rest unchanged.
    anatomy_rng, pose_rng, fracture_rng, noise_rng = (
        np.random.default_rng(int(s)) for s in rng.integers(0, 2**63, size=4)
    )
    body_part = body_part or _draw_type(profile.body_parts, anatomy_rng)
    age = int(anatomy_rng.integers(profile.age_years[0], profile.age_years[1] + 1))
    anatomy = build_anatomy(body_part, age, anatomy_rng, profile.pixel_spacing_mm)
    pixel_mm = anatomy.field_mm / size

    laterality = "L" if pose_rng.random() < 0.5 else "R"
    to_px = _pose(anatomy, laterality, pixel_mm, size, pose_rng)
    field = _Field.random(size, pose_rng)

    plans, motion = _plan_fractures(anatomy, to_px, field, profile, fracture, pixel_mm, fracture_rng)
    att = attenuation_map(anatomy, plans, motion, to_px, size, pixel_mm, anatomy_rng)
    _burn_marker(att, laterality, field, pose_rng)
    field_mask = field.mask()
    detector = _expose(att, field_mask, profile, pixel_mm, noise_rng)
    display, window = _process(detector, field_mask, profile, pixel_mm)

    fractures = []
    for plan in plans:
        bone = anatomy.bones[plan.bone_index]
        base = motion.bone_motion(plan.bone_index, bone) if motion is not None else np.eye(3)
        box = fracture_box(plan, bone, to_px @ base @ np.linalg.inv(bone.frame()), pixel_mm, size)
        if field.contains(
            (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, inset=0.0
        ):  # a partner break may fall outside the field
            fractures.append(Fracture(bone.name, plan.type, box, plan.displacement_mm, plan.angulation_deg))
    return SynthImage(
        display, detector, fractures, body_part, laterality, round(pixel_mm, 4), profile.bit_depth, age, window
    )


def check_size(size: int) -> None:
    """Reject image sizes the anatomy and noise model are not meant for."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not SIZE_RANGE[0] <= size <= SIZE_RANGE[1]:
        raise ConfigError(f"size must be an integer in [{SIZE_RANGE[0]}, {SIZE_RANGE[1]}] pixels, got {size!r}")


def _check_args(size: int, body_part: str | None, fracture: bool | str | None) -> None:
    check_size(size)
    if body_part is not None and body_part not in BODY_PARTS:
        raise ConfigError(f"body_part must be one of {BODY_PARTS}, got {body_part!r}")
    if fracture is not None and not isinstance(fracture, bool) and fracture not in FRACTURE_TYPES:
        raise ConfigError(f"fracture must be None, True, False or one of {FRACTURE_TYPES}, got {fracture!r}")


def _pose(anatomy: Anatomy, laterality: str, pixel_mm: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """3x3 affine from limb-frame mm to pixels: slight rotation and shift; a left limb is mirrored."""
    theta = np.radians(rng.uniform(-12, 12))
    shift = rng.uniform(-0.06, 0.06, size=2) * anatomy.field_mm
    c, s = np.cos(theta), np.sin(theta)
    mirror = -1.0 if laterality == "L" else 1.0
    lin = np.array([[c, -s], [s, c]]) @ np.diag([mirror, 1.0]) / pixel_mm
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = size / 2 - lin @ (np.array(anatomy.view_center) + shift)
    return m


@dataclass(frozen=True)
class _Field:
    """The collimated (exposed) rectangle, possibly rotated, in pixels."""

    center: tuple[float, float]
    half: tuple[float, float]
    angle: float
    size: int

    @staticmethod
    def random(size: int, rng: np.random.Generator) -> _Field:
        center = tuple(size / 2 + rng.uniform(-0.04, 0.04, 2) * size)
        half = tuple(rng.uniform(0.36, 0.52, 2) * size)
        return _Field(center, half, float(np.radians(rng.uniform(-3, 3))), size)

    def _axes(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image (x, y) -> field axes (a, b) relative to the centre."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        dx, dy = x - self.center[0], y - self.center[1]
        return dx * c + dy * s, -dx * s + dy * c

    def _point(self, a: float, b: float) -> tuple[float, float]:
        """Field axes (a, b) -> image (x, y)."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        return self.center[0] + a * c - b * s, self.center[1] + a * s + b * c

    def mask(self) -> np.ndarray:
        """Exposed fraction per pixel: the rectangle filled with anti-aliased edges."""
        corners = [self._point(sx * self.half[0], sy * self.half[1]) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        canvas = np.zeros((self.size, self.size), np.uint8)
        cv2.fillConvexPoly(canvas, np.rint(np.array(corners) * 16).astype(np.int32), 255, cv2.LINE_AA, shift=4)
        return canvas.astype(np.float32) * np.float32(1 / 255)

    def contains(self, x: float, y: float, inset: float) -> bool:
        """Whether (x, y) lies at least `inset` px inside both the field and the image."""
        a, b = self._axes(np.float64(x), np.float64(y))
        in_field = abs(a) <= self.half[0] - inset and abs(b) <= self.half[1] - inset
        return bool(in_field and inset <= x <= self.size - inset and inset <= y <= self.size - inset)

    def corner(self, sx: float, sy: float, inset: float) -> tuple[float, float]:
        """The field corner in direction (sx, sy), moved `inset` px inwards and into the image."""
        x, y = self._point(sx * (self.half[0] - inset), sy * (self.half[1] - inset))
        return float(np.clip(x, inset, self.size - inset)), float(np.clip(y, inset, self.size - inset))


def _plan_fractures(
    anatomy: Anatomy,
    to_px: np.ndarray,
    field: _Field,
    profile: SiteProfile,
    fracture: bool | str | None,
    pixel_mm: float,
    rng: np.random.Generator,
) -> tuple[list[FracturePlan], LimbMotion | None]:
    """Decide whether and where bones break; a break is only placed where it is inside the field.

    At most one fracture per image is 'displaced' (it moves the limb beyond it) and it is placed
    first, so a second fracture further down the limb is checked where it ends up.
    """
    wanted = rng.random() < profile.prevalence if fracture is None else fracture is not False
    if not wanted:
        return [], None
    kinds = [fracture if isinstance(fracture, str) else _draw_type(profile.fracture_types, rng)]
    if rng.random() < profile.multi_fracture_rate:
        second = {k: w for k, w in profile.fracture_types.items() if k != "displaced"}
        if second:
            kinds.append(_draw_type(second, rng))
    kinds.sort(key=lambda k: k != "displaced")
    plans: list[FracturePlan] = []
    motion: LimbMotion | None = None
    placed = 0
    for index in rng.permutation([i for i, b in enumerate(anatomy.bones) if b.fracturable]):
        bone = anatomy.bones[index]
        if placed == len(kinds):
            break
        if motion is not None and index in motion.broken:
            continue
        base = motion.bone_motion(index, bone) if motion is not None else np.eye(3)
        to_bone_px = to_px @ base @ np.linalg.inv(bone.frame())
        visible = [
            u
            for u in np.linspace(0.12, 0.88, 25) * bone.length
            if field.contains(*(to_bone_px @ [u, 0.0, 1.0])[:2], inset=float(bone.radius(u)[0]) / pixel_mm + 4)
        ]
        if not visible:
            continue
        u = float(rng.choice(visible))
        if kinds[placed] == "displaced":
            broken, motion = plan_displaced(anatomy.bones, int(index), u, profile, rng)
            plans += broken
        else:
            plans.append(plan_fracture(bone, int(index), kinds[placed], u, profile, rng))
        placed += 1
    return plans, motion


def _draw_type(weights: Mapping[str, float], rng: np.random.Generator) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names])
    return names[rng.choice(len(names), p=p / p.sum())]


def _burn_marker(att: np.ndarray, laterality: str, field: _Field, rng: np.random.Generator) -> None:
    """Lead 'L'/'R' marker in a plastic holder, placed in a field corner (burned-in annotation)."""
    size = att.shape[0]
    font = cv2.FONT_HERSHEY_SIMPLEX if rng.random() < 0.5 else cv2.FONT_HERSHEY_DUPLEX
    height = max(8.0, 0.05 * size)
    thickness = max(1, round(height / 9))
    scale = height / cv2.getTextSize(laterality, font, 1.0, thickness)[0][1]
    (w, h), _ = cv2.getTextSize(laterality, font, scale, thickness)
    pad = max(2, round(0.3 * h))
    box_w, box_h = w + 2 * pad, h + 2 * pad
    sx, sy = rng.choice([-1.0, 1.0], size=2)
    cx, cy = field.corner(sx, sy, inset=0.04 * size + max(box_w, box_h) / 2)
    x0, y0 = int(round(cx - box_w / 2)), int(round(cy - box_h / 2))
    canvas = np.zeros((box_h, box_w), np.uint8)
    cv2.putText(canvas, laterality, (pad, pad + h), font, scale, 255, thickness, cv2.LINE_8)
    region = att[y0 : y0 + box_h, x0 : x0 + box_w]
    region += MARKER_HOLDER + (LEAD / 255.0) * canvas[: region.shape[0], : region.shape[1]].astype(np.float32)


def _expose(
    att: np.ndarray, field: np.ndarray, profile: SiteProfile, pixel_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """Photons through the limb plus scatter, quantum and read-out noise, log, quantised.

    Full-image temporaries are reused in place: on small VMs allocating them costs as much as the maths.
    """
    size = att.shape[0]
    i0 = profile.exposure * pixel_mm**2
    heel = np.linspace(-HEEL, HEEL, size, dtype=np.float32) * np.float32(1 if rng.random() < 0.5 else -1)
    beam = field * (np.float32(i0) * (1.0 + heel))[:, None]
    expected = np.exp(np.negative(att))
    expected *= beam
    removed = np.subtract(beam, expected, out=beam)  # photons the limb took out of the beam
    scatter = _lowpass(removed, 15.0 / pixel_mm)
    scatter *= field
    scatter *= np.float32(SCATTER)
    expected += scatter
    counts = _noisy_counts(expected, np.float32(profile.electronic_noise), rng)
    top = 2**profile.bit_depth - 1
    # value = (ATT_OFFSET - log(counts / i0)) * top / ATT_RANGE, computed in place.
    np.maximum(counts, 0.5, out=counts)
    np.log(counts, out=counts)
    np.subtract(np.float32(ATT_OFFSET + np.log(i0)), counts, out=counts)
    counts *= np.float32(top / ATT_RANGE)
    np.rint(counts, out=counts)
    np.clip(counts, 0, top, out=counts)
    return counts.astype(np.uint16)


def _noisy_counts(expected: np.ndarray, read_noise: np.float32, rng: np.random.Generator) -> np.ndarray:
    """Poisson photon counts plus Gaussian read-out noise.

    Where many photons arrive, Poisson(m) + N(0, s^2) is drawn as m + sqrt(m + s^2) * N(0, 1)
    (one normal draw for both); where few arrive (behind lead, in the penumbra) exactly.
    Outside the field no photons arrive and only read-out noise remains.
    """
    counts = rng.standard_normal(expected.shape, dtype=np.float32)
    spread = np.add(expected, read_noise**2)
    counts *= np.sqrt(spread, out=spread)
    counts += expected
    low = expected < EXACT_POISSON_BELOW
    low &= expected > 0
    if low.any():
        few = expected[low]
        counts[low] = rng.poisson(few) + read_noise * rng.standard_normal(few.shape, dtype=np.float32)
    return counts


def _lowpass(image: np.ndarray, sigma_px: float, factor: int = 8) -> np.ndarray:
    """Gaussian blur computed at 1/factor resolution: cheap, and exact enough for smooth fields."""
    size = image.shape[0]
    small = cv2.resize(image, (max(size // factor, 1), max(size // factor, 1)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=max(sigma_px / factor, 0.5))
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def _process(
    detector: np.ndarray, field: np.ndarray, profile: SiteProfile, pixel_mm: float
) -> tuple[np.ndarray, tuple[float, float]]:
    """Vendor-style processing into a display image: equalisation, auto-window, gamma, unsharp mask.

    Returns the display image and a DICOM VOI window (centre, width) for the unprocessed values.
    """
    top = 2**profile.bit_depth - 1
    per_att = top / ATT_RANGE
    x = detector.astype(np.float32)
    lead_level = (6.0 + ATT_OFFSET) * per_att
    if profile.equalization > 0:
        # Soft-tissue equalisation: subtract part of the local mean of the anatomy (normalised
        # convolution, so air, lead and collimator do not bleed in), keeping bone detail.
        anatomy = ((field > 0.99) & (x > (0.1 + ATT_OFFSET) * per_att) & (x < lead_level)).astype(np.float32)
        sigma = EQUALIZE_MM / pixel_mm
        local = _lowpass(x * anatomy, sigma)
        local /= np.maximum(_lowpass(anatomy, sigma), np.float32(1e-3))
        local -= np.float32((EQUALIZE_KNEE + ATT_OFFSET) * per_att)
        np.maximum(local, 0.0, out=local)
        local *= anatomy
        local *= np.float32(profile.equalization)
        x -= local
    step = max(1, detector.shape[0] // 128)
    exposed = (field[::step, ::step] > 0.99) & (detector[::step, ::step] < lead_level)
    lo = (AIR_ATT + ATT_OFFSET) * per_att  # air is black even where equalisation overshoots at the skin
    hi = max(float(np.percentile(x[::step, ::step][exposed], 99.5)) if exposed.any() else float(top), lo + 1.0)
    x -= np.float32(lo)
    x *= np.float32(1 / (hi - lo))
    y = np.clip(x, 0.0, 1.0, out=x)
    if profile.gamma != 1.0:
        np.power(y, np.float32(profile.gamma), out=y)
    if profile.edge_enhance > 0:
        detail = np.subtract(y, _lowpass(y, 2.5 / pixel_mm, factor=2))
        detail *= np.float32(profile.edge_enhance)
        y += detail
    np.clip(y, 0.0, 1.0, out=y)
    y *= np.float32(2**profile.png_bits - 1)
    display = np.rint(y, out=y).astype(np.uint8 if profile.png_bits == 8 else np.uint16)
    raw_lo, raw_hi = (
        np.percentile(detector[::step, ::step][exposed], [0.5, 99.5]) if exposed.any() else (0.0, float(top))
    )
    return display, (float((raw_lo + raw_hi) / 2), float(max(raw_hi - raw_lo, 1.0)))
