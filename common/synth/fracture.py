"""Fracture geometry: where a bone breaks, how its fragments move, and the ground-truth box.

A fractured bone is rendered as fragments of the intact bone: each fragment keeps one side of
the (slightly wavy) fracture line, minus a gap, and is moved by a rigid motion in the bone's own
(u along, v across) frame. Because every fragment is the same bone model, densities, cortex and
texture stay continuous across a non-displaced crack, as on a real radiograph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.synth.anatomy import Bone
from common.synth.profiles import SiteProfile

MINOR_SHARE = {"transverse": 0.1, "oblique": 0.1, "comminuted": 0.2}
"""Non-'displaced' types move by at most this share of the site's maximum displacement/angulation."""
OBLIQUITY = {
    "transverse": (0.0, 0.2),
    "oblique": (0.5, 0.95),
    "comminuted": (0.0, 0.5),
    "hairline": (0.0, 0.4),
    "displaced": (0.0, 0.6),
}
"""Range of the fracture line's angle to the transverse direction (radians), per type."""


@dataclass(frozen=True)
class Fracture:
    """Ground truth for one fracture, in the final image's pixel coordinates."""

    bone: str
    type: str
    box_xyxy: tuple[float, float, float, float]
    displacement_mm: float
    """Translation of the distal fragment at the fracture site (0 for hairline)."""
    angulation_deg: float
    """Angle between the proximal and distal fragment axes (0 for hairline)."""


@dataclass(frozen=True)
class FracturePlan:
    """Everything needed to draw one fracture on one bone (bone-local millimetres)."""

    bone_index: int
    type: str
    u: float
    """Axial position where the fracture line crosses the bone axis."""
    obliquity: float
    """Angle of the fracture line to the transverse direction (radians)."""
    gap: float
    wave: tuple[float, float, float]
    """Irregularity of the line: amplitude (mm), wavenumber (rad/mm), phase."""
    distal_motion: np.ndarray
    """3x3 rigid motion of the distal fragment (bone-local)."""
    displacement_mm: float
    angulation_deg: float
    butterfly: np.ndarray | None = None
    """3x2 triangle (bone-local) of a comminuted fracture's wedge fragment."""
    butterfly_motion: np.ndarray | None = None
    crack: tuple[float, float, float] | None = None
    """Hairline only: (v_start, v_end, depth) of the partial crack."""

    def fragments(self) -> list[tuple[str, np.ndarray]]:
        """(kind, motion) of each piece; a hairline keeps the bone in one piece."""
        if self.type == "hairline":
            return [("cracked", np.eye(3))]
        pieces = [("proximal", np.eye(3)), ("distal", self.distal_motion)]
        if self.butterfly is not None:
            pieces.append(("butterfly", self.butterfly_motion))
        return pieces

    def line_distance(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Signed distance (mm) to the wavy fracture line, positive on the distal side."""
        amp, k, phase = self.wave
        c, s = np.cos(self.obliquity), np.sin(self.obliquity)
        return (u - self.u) * c - v * s + amp * np.sin(k * v + phase)

    def mask(self, kind: str, u: np.ndarray, v: np.ndarray, pixel_mm: float) -> np.ndarray:
        """How much of the bone a fragment keeps at (u, v), anti-aliased over one pixel."""
        d = self.line_distance(u, v)
        if kind == "cracked":
            v0, v1, depth = self.crack
            half = max(self.gap / 2, 0.5 * pixel_mm)
            across = _step((v - v0) / 2.0) * _step((v1 - v) / 2.0)
            return 1.0 - depth * (self.gap / 2 / half) * np.exp(-np.square(d / half)) * across
        tri = None if self.butterfly is None else _triangle_depth(self.butterfly, u, v)
        if kind == "butterfly":
            return _step((tri - self.gap / 2) / pixel_mm)
        keep = _step(((-d if kind == "proximal" else d) - self.gap / 2) / pixel_mm)
        if tri is not None:
            keep = keep * _step((-tri - self.gap / 2) / pixel_mm)
        return keep

    def outline(self, bone: Bone) -> np.ndarray:
        """Bone-local points a radiologist's box must cover: the line on every fragment."""
        r = float(bone.radius(self.u)[0])
        tan = np.tan(self.obliquity)
        if self.crack is not None:
            vs = np.clip(np.array(self.crack[:2]), -r, r)
        else:
            vs = np.array([-r, r])
        line = np.stack([self.u + vs * tan, vs], axis=1)
        points = [line] + [_apply(m, line) for kind, m in self.fragments() if kind == "distal"]
        if self.butterfly is not None:
            tri = self.butterfly.copy()
            tri[:, 1] = np.clip(tri[:, 1], -r, r)
            points.append(_apply(self.butterfly_motion, tri))
        return np.concatenate(points)


@dataclass(frozen=True)
class LimbMotion:
    """Rigid motion (limb-frame 3x3) of everything distal to a displaced fracture.

    An angulated bone drags the rest of the limb with it (the hand follows a broken radius), so
    distal bones move with it and the soft tissue bends around the break instead of the fragment
    sticking out of the skin.
    """

    matrix: np.ndarray
    origin: np.ndarray
    """A point on the cut across the limb (the primary fracture centre)."""
    axis: np.ndarray
    """Unit vector along the broken bone, pointing distally."""
    level: int
    digit: int
    broken: frozenset[int]
    """Bones whose fragments already carry the motion (the broken bone and its partner)."""

    def bone_motion(self, index: int, bone: Bone) -> np.ndarray:
        """Motion applied to a whole bone: the limb motion if it lies beyond the break."""
        if index in self.broken or (self.digit and bone.digit != self.digit):
            return np.eye(3)
        center = (np.array(bone.p0) + np.array(bone.p1)) / 2
        beyond = bone.level > self.level or (bone.level == self.level and (center - self.origin) @ self.axis > 0)
        return self.matrix if beyond else np.eye(3)


def plan_fracture(
    bone: Bone, bone_index: int, kind: str, u: float, profile: SiteProfile, rng: np.random.Generator
) -> FracturePlan:
    """Draw a fracture that moves at most its own distal fragment, slightly (not 'displaced')."""
    r = float(bone.radius(u)[0])
    obliquity, wave = _line(kind, r, rng)
    if kind == "hairline":
        side = rng.choice([-1.0, 1.0])
        extent = rng.uniform(0.35, 0.8) * 2 * r
        v0, v1 = sorted((side * 1.3 * r, side * (1.0 * r - extent)))
        return FracturePlan(
            bone_index,
            kind,
            u,
            obliquity,
            rng.uniform(0.4, 0.6),
            wave,
            np.eye(3),
            0.0,
            0.0,
            crack=(v0, v1, rng.uniform(0.75, 0.95)),
        )
    share = MINOR_SHARE[kind]
    shift = profile.max_displacement_mm * share * rng.uniform(0.0, 1.0)
    angle = np.radians(profile.max_angulation_deg * share * rng.uniform(0.0, 1.0)) * rng.choice([-1.0, 1.0])
    center = np.array([u, 0.0])
    distal = _rigid(angle, center, _slide(rng, np.array([1.0, 0.0]), np.array([0.0, 1.0])) * shift)
    plan = dict(
        bone_index=bone_index,
        type=kind,
        u=u,
        obliquity=obliquity,
        gap=rng.uniform(0.6, 1.0),
        wave=wave,
        distal_motion=distal,
        displacement_mm=round(float(shift), 2),
        angulation_deg=round(abs(float(np.degrees(angle))), 2),
    )
    if kind == "comminuted":
        side = rng.choice([-1.0, 1.0])
        tan = np.tan(obliquity)
        base_v, apex_v = side * 1.4 * r, -side * 0.15 * r
        tri = np.array(
            [[u + apex_v * tan, apex_v], [u + base_v * tan - 1.1 * r, base_v], [u + base_v * tan + 1.1 * r, base_v]]
        )
        motion = _rigid(
            np.radians(rng.uniform(-15, 15)), tri.mean(axis=0), np.array([0.0, side * rng.uniform(1.0, 2.5)])
        )
        plan.update(butterfly=tri, butterfly_motion=motion)
    return FracturePlan(**plan)


def plan_displaced(
    bones: tuple[Bone, ...], bone_index: int, u: float, profile: SiteProfile, rng: np.random.Generator
) -> tuple[list[FracturePlan], LimbMotion]:
    """A displaced fracture: the limb beyond it moves; a paired bone crossing the cut breaks too.

    The pivot sits midway between the two breaks and the translation is capped, so every
    recorded displacement stays within the site's maximum.
    """
    bone = bones[bone_index]
    to_limb = np.linalg.inv(bone.frame())
    origin = (to_limb @ [u, 0.0, 1.0])[:2]
    axis, across = to_limb[:2, 0], to_limb[:2, 1]
    breaks = [(bone_index, u)]
    for j, other in enumerate(bones):
        if j != bone_index and other.fracturable and other.level == bone.level and other.digit == bone.digit:
            p0, p1 = np.array(other.p0), np.array(other.p1)
            t = ((origin - p0) @ axis) / ((p1 - p0) @ axis)
            if 0.05 <= t <= 0.95:
                breaks.append((j, t * other.length))
    centers = [(np.linalg.inv(bones[j].frame()) @ [uj, 0.0, 1.0])[:2] for j, uj in breaks]
    pivot = np.mean(centers, axis=0)
    angle = np.radians(profile.max_angulation_deg * rng.uniform(0.3, 1.0)) * rng.choice([-1.0, 1.0])
    swing = 2 * abs(np.sin(angle / 2)) * max(np.linalg.norm(c - pivot) for c in centers)
    shift = max(min(profile.max_displacement_mm * rng.uniform(0.4, 1.0), profile.max_displacement_mm - swing), 0.0)
    matrix = _rigid(angle, pivot, _slide(rng, axis, across) * shift)
    plans = []
    for (j, uj), c in zip(breaks, centers):
        frame = bones[j].frame()
        obliquity, wave = _line("displaced", float(bones[j].radius(uj)[0]), rng)
        moved = np.linalg.norm(_apply(matrix, c[None])[0] - c)
        plans.append(
            FracturePlan(
                j,
                "displaced",
                float(uj),
                obliquity,
                rng.uniform(0.8, 1.4),
                wave,
                frame @ matrix @ np.linalg.inv(frame),
                round(float(moved), 2),
                round(abs(float(np.degrees(angle))), 2),
            )
        )
    motion = LimbMotion(matrix, origin, axis, bone.level, bone.digit, frozenset(j for j, _ in breaks))
    return plans, motion


def fracture_box(
    plan: FracturePlan, bone: Bone, local_to_px: np.ndarray, pixel_mm: float, size: int
) -> tuple[float, float, float, float]:
    """Pixel box over the fracture line(s) with a modest margin, clipped to the image."""
    pts = _apply(local_to_px, plan.outline(bone))
    margin = (0.25 * float(bone.radius(plan.u)[0]) + plan.wave[0]) / pixel_mm + 1.5
    x0, y0 = pts.min(axis=0) - margin
    x1, y1 = pts.max(axis=0) + margin
    clip = lambda a: float(round(min(max(a, 0.0), float(size)), 1))
    return clip(x0), clip(y0), clip(x1), clip(y1)


def _line(kind: str, radius: float, rng: np.random.Generator) -> tuple[float, tuple[float, float, float]]:
    """Obliquity of the fracture line (radians from transverse, either sign) and its irregularity."""
    lo, hi = OBLIQUITY[kind]
    obliquity = rng.choice([-1.0, 1.0]) * rng.uniform(lo, hi)
    wave = (
        rng.uniform(0.15, 0.35) * min(radius, 8.0) / 4,
        2 * np.pi / rng.uniform(3.0, 7.0),
        rng.uniform(0, 2 * np.pi),
    )
    return float(obliquity), wave


def _slide(rng: np.random.Generator, axis: np.ndarray, across: np.ndarray) -> np.ndarray:
    """Unit direction of fragment translation: mostly sideways, axially only ever shortening."""
    phi = rng.uniform(0.0, 0.6)
    return -np.sin(phi) * axis + rng.choice([-1.0, 1.0]) * np.cos(phi) * across


def _rigid(angle: float, center: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Rotate by `angle` about `center`, then translate by `shift` (3x3, (u, v) coordinates)."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = center - rot @ center + shift
    return m


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:2, :2].T + m[:2, 2]


def _step(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0.0, 1.0)


def _triangle_depth(tri: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance inside a triangle (positive inside): the minimum over its edges."""
    (ax, ay), (bx, by) = tri[1] - tri[0], tri[2] - tri[0]
    if ax * by - ay * bx < 0:  # make it counter-clockwise so 'left of every edge' means inside
        tri = tri[[0, 2, 1]]
    depth = None
    for a, b in ((tri[0], tri[1]), (tri[1], tri[2]), (tri[2], tri[0])):
        e = (b - a) / np.linalg.norm(b - a)
        d = (u - a[0]) * -e[1] + (v - a[1]) * e[0]
        depth = d if depth is None else np.minimum(depth, d)
    return depth
