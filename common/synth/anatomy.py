"""Limb geometry in millimetres: soft-tissue envelopes and bones as tapered, flared rods.

Coordinates are a 'limb frame' (x across the limb, y along it, origin near the knee/elbow) so
that one upper-limb and one lower-limb model serve every body part; a body part is a view
(centre and field size) onto one of them plus the bones that may fracture there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ADULT_AGE = 16
"""Growth plates close and bones reach adult size at about this age."""


@dataclass(frozen=True)
class Bone:
    """A bone as a rod from p0 (proximal) to p1 (distal) with a radius that flares at the ends.

    The cross-section is a hollow ellipse: the cortex is `cortex` mm thick in the shaft and thin
    in the epiphyses, where the trabecular (spongy) bone is dense. Short round bones (carpals,
    patella, femoral head) are rods whose rounded caps meet in the middle.
    """

    name: str
    p0: tuple[float, float]
    p1: tuple[float, float]
    shaft: tuple[float, float]
    """Shaft radius near p0 and near p1 (linear taper in between)."""
    ends: tuple[float, float]
    """Half-width of the epiphysis at p0 and at p1."""
    flare: tuple[float, float]
    """Length over which the shaft widens into each epiphysis."""
    cap: tuple[float, float]
    """Length of the rounded end cap at p0 and p1 (half the length for a round bone)."""
    cortex: float
    """Cortical thickness in the shaft (mm)."""
    depth: float = 1.0
    """Thickness along the beam relative to the width (flat bones < 1)."""
    flat_ends: float = 0.0
    """How much thinner along the beam the epiphyses are than their width suggests (condyles)."""
    level: int = 0
    """Position along the limb's chain (humerus 0, forearm 1, carpus 2, ...): what moves with a break."""
    digit: int = 0
    """Hand ray 1-5 (0 elsewhere): a break in a ray moves only that ray."""
    fracturable: bool = False
    physis: bool = False
    """Open growth plates (children): a thin radiolucent band near each end."""

    @property
    def is_round(self) -> bool:
        return self.cap[0] >= self.length / 2 - 1e-6

    @property
    def length(self) -> float:
        return _length(self.p0, self.p1)

    def frame(self) -> np.ndarray:
        """3x3 affine from limb-frame mm to bone-local (u along the bone from p0, v across)."""
        return _segment_frame(self.p0, self.p1)

    def radius(self, u: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Outer radius and 'epiphysis weight' (0 in the shaft, 1 at the ends) at axial position u."""
        length = self.length
        t0 = np.asarray(u, dtype=np.float32)
        t1 = length - t0
        g0 = np.exp(-np.square(t0 / self.flare[0]))
        g1 = np.exp(-np.square(t1 / self.flare[1]))
        shaft = self.shaft[0] + (self.shaft[1] - self.shaft[0]) * np.clip(t0 / length, 0.0, 1.0)
        r = shaft + (self.ends[0] - self.shaft[0]) * g0 + (self.ends[1] - self.shaft[1]) * g1
        r = r * _cap(t0, self.cap[0]) * _cap(t1, self.cap[1])
        return r, np.maximum(g0, g1)


@dataclass(frozen=True)
class Envelope:
    """Soft tissue around a segment: radius interpolated along the axis, rounded ends."""

    p0: tuple[float, float]
    p1: tuple[float, float]
    knots: tuple[float, ...]
    """Positions of `radii` as fractions of the length (increasing, 0..1)."""
    radii: tuple[float, ...]
    depth: float = 0.9
    cap: float = 0.0
    digit: int = 0

    def frame(self) -> np.ndarray:
        return _segment_frame(self.p0, self.p1)

    @property
    def length(self) -> float:
        return _length(self.p0, self.p1)

    def radius(self, u: np.ndarray) -> np.ndarray:
        length = self.length
        r = np.interp(u / length, self.knots, self.radii).astype(np.float32)
        return r * _cap(u, self.cap) * _cap(length - u, self.cap)


@dataclass(frozen=True)
class Anatomy:
    """One limb: envelopes (union) and bones (summed), plus where a body-part view is centred."""

    bones: tuple[Bone, ...]
    envelopes: tuple[Envelope, ...]
    view_center: tuple[float, float]
    field_mm: float
    """Edge of the square field of view in mm, whatever the image size."""


@dataclass(frozen=True)
class _Part:
    limb: str
    view_y: tuple[float, float]
    field_scale: float
    candidates: tuple[str, ...]


_PARTS: dict[str, _Part] = {
    "hand": _Part(
        "upper", (-215.0, -195.0), 1.1, ("metacarpal", "proximal_phalanx", "middle_phalanx", "distal_phalanx")
    ),
    "forearm": _Part("upper", (-45.0, 5.0), 1.3, ("radius", "ulna")),
    "lower_leg": _Part("lower", (150.0, 230.0), 1.6, ("tibia", "fibula")),
    "femur": _Part("lower", (-290.0, -170.0), 1.9, ("femur",)),
}


BODY_PARTS: tuple[str, ...] = tuple(_PARTS)


def _age_scale(age: float) -> float:
    """Linear size of a child's skeleton relative to an adult's (coarse growth curve)."""
    return min(1.0, 0.5 + 0.5 * age / ADULT_AGE)


def build_anatomy(body_part: str, age: float, rng: np.random.Generator, base_spacing_mm: float) -> Anatomy:
    """Build a randomly proportioned limb for `body_part`, scaled for the patient's age."""
    part = _PARTS[body_part]
    size = _age_scale(age) * rng.uniform(0.92, 1.08)
    build = _upper_limb if part.limb == "upper" else _lower_limb
    bones, envelopes = build(rng)
    physis = age < ADULT_AGE
    bones = tuple(
        _scaled_bone(b, size, fracturable=b.name.startswith(part.candidates), physis=physis and not b.is_round)
        for b in bones
    )
    envelopes = tuple(_scaled_envelope(e, size) for e in envelopes)
    center = (0.0, float(rng.uniform(*part.view_y)) * size)
    return Anatomy(bones, envelopes, center, part.field_scale * base_spacing_mm * 512)


def _jit(rng: np.random.Generator, x: float, frac: float = 0.06) -> float:
    return float(x * (1.0 + frac * rng.uniform(-1.0, 1.0)))


def long_bone(
    name: str,
    p0: tuple[float, float],
    p1: tuple[float, float],
    shaft: tuple[float, float],
    ends: tuple[float, float],
    flare: tuple[float, float],
    cortex: float,
    level: int,
    depth: float = 1.0,
    digit: int = 0,
    rounding: tuple[float, float] = (0.6, 0.6),
    flat_ends: float = 0.0,
) -> Bone:
    """A tubular bone; each end cap is rounded over `rounding` x the end half-width (flat plateaus < 0.6)."""
    length = _length(p0, p1)
    cap = (min(rounding[0] * ends[0], length / 2), min(rounding[1] * ends[1], length / 2))
    return Bone(name, p0, p1, shaft, ends, flare, cap, cortex, depth, flat_ends, level, digit)


def round_bone(
    name: str,
    center: tuple[float, float],
    half_len: float,
    half_width: float,
    angle_deg: float,
    level: int,
    depth: float = 1.0,
) -> Bone:
    """An ellipsoidal bone (carpal, patella, femoral head): thin cortex, dense trabecular core."""
    a = np.radians(angle_deg)
    d = np.array([np.sin(a), np.cos(a)]) * half_len
    p0 = (center[0] - d[0], center[1] - d[1])
    p1 = (center[0] + d[0], center[1] + d[1])
    w = (half_width, half_width)
    return Bone(name, p0, p1, w, w, (4 * half_len, 4 * half_len), (half_len, half_len), 0.8, depth, 0.0, level)


def _upper_limb(rng: np.random.Generator) -> tuple[list[Bone], list[Envelope]]:
    """Right arm, palm towards the tube: hand at the top (-y), elbow at the bottom (+y)."""
    j = lambda x, f=0.06: _jit(rng, x, f)
    bones = [
        long_bone(
            "humerus",
            (-2, 420),
            (0, j(137, 0.02)),
            (10.5, 10),
            (14, j(31)),
            (40, 38),
            3.2,
            0,
            rounding=(0.6, 0.4),
            flat_ends=0.5,
        ),
        long_bone(
            "radius",
            (-11, 128),
            (j(-14), -124),
            (6.0, 7.5),
            (j(9.5), j(15.5)),
            (14, j(32)),
            2.3,
            1,
            rounding=(0.5, 0.35),
            flat_ends=0.3,
        ),
        long_bone("ulna", (10, 142), (j(12), -118), (7.0, 5.0), (13, j(8.5)), (22, 12), 2.1, 1),
    ]
    carpals = [
        ("scaphoid", (-15, -127), 9.0, 5.5, 30),
        ("lunate", (-3, -129), 6.5, 6.5, 0),
        ("triquetrum", (9, -131), 5.5, 5.5, 0),
        ("pisiform", (14, -134), 4.0, 4.0, 0),
        ("trapezium", (-23, -144), 6.0, 6.5, 20),
        ("trapezoid", (-13, -147), 5.0, 5.0, 0),
        ("capitate", (-3, -146), 10.0, 6.0, 0),
        ("hamate", (9, -145), 8.5, 6.0, 10),
    ]
    bones += [round_bone(n, c, j(a, 0.05), j(b, 0.05), ang, 2) for n, c, a, b, ang in carpals]
    envelopes = [
        Envelope((0, 430), (0, -135), (0.0, 0.5, 0.6, 0.8, 1.0), (48, 42, j(44), j(36), 29), 0.85, cap=15),
        Envelope((-2, -105), (-2, -232), (0.0, 0.25, 0.75, 1.0), (29, j(40), j(44), 40), 0.55, cap=22),
    ]
    # digit: metacarpal base (x, y), ray angle from 'up' (deg, + = ulnar), bone lengths, radii.
    digits = [
        (1, (-25, -150), -38, (46, 32, 0, 24), 4.5, 4.2),
        (2, (-14, -158), -9, (68, 41, 24, 18), 3.8, 3.6),
        (3, (-3, -160), -2, (65, 45, 28, 19), 3.8, 3.7),
        (4, (7, -158), 5, (58, 42, 27, 19), 3.3, 3.4),
        (5, (16, -155), 12, (54, 34, 20, 17), 3.2, 3.1),
    ]
    kinds = ("metacarpal", "proximal_phalanx", "middle_phalanx", "distal_phalanx")
    for digit, base, angle, lengths, r_mc, r_ph in digits:
        pos = np.array(base, dtype=float)
        joints = [pos]
        for level, (kind, length) in enumerate(zip(kinds, lengths), start=3):
            if length == 0:
                continue
            a = np.radians(angle * (1.0 if level == 3 else 1.25) + rng.uniform(-3, 3))
            d = np.array([np.sin(a), -np.cos(a)])
            end = pos + d * j(length, 0.05)
            r = r_mc if level == 3 else r_ph * (0.85 if kind == "distal_phalanx" else 1.0)
            head = 1.6 if level == 3 else (1.1 if kind == "distal_phalanx" else 1.3)
            bones.append(
                long_bone(
                    f"{kind}_{digit}",
                    tuple(pos),
                    tuple(end),
                    (r, r),
                    (1.5 * r, head * r),
                    (0.25 * length, 0.2 * length),
                    0.35 * r,
                    level,
                    0.9,
                    digit,
                )
            )
            joints.append(end)
            pos = end + d * j(2.0, 0.2)
        # Soft tissue of the ray: the thumb's covers its metacarpal (thenar eminence), a finger's starts at the knuckle.
        start = joints[0] if digit == 1 else joints[1] - 0.5 * (joints[1] - joints[0])
        width = (15.0, 10.0) if digit == 1 else (10.5, 8.0)
        envelopes.append(
            Envelope(tuple(start), tuple(pos + d * 3.0), (0.0, 1.0), width, 0.9, cap=0.8 * width[1], digit=digit)
        )
    return bones, envelopes


def _lower_limb(rng: np.random.Generator) -> tuple[list[Bone], list[Envelope]]:
    """Right leg, AP: hip at the top (-y), knee joint near y = 0, ankle at the bottom (+y)."""
    j = lambda x, f=0.06: _jit(rng, x, f)
    bones = [
        round_bone("ilium", (-85, -485), 55, 45, 10, 0, depth=0.25),
        round_bone("femoral_head", (-62, -447), j(23, 0.05), 23, 0, 1),
        long_bone("femoral_neck", (-22, -415), (-55, -440), (15, 15), (17, 19), (8, 8), 2.5, 1),
        long_bone(
            "femur",
            (-12, -440),
            (0, 0),
            (j(13.5), 13),
            (24, j(40)),
            (70, 55),
            j(5.5, 0.1),
            1,
            rounding=(0.6, 0.35),
            flat_ends=0.4,
        ),
        round_bone("lesser_trochanter", (-30, -380), 9, 7, 30, 1),
        round_bone("patella", (2, -28), j(23, 0.05), j(21, 0.05), 0, 2, depth=0.9),
        long_bone(
            "tibia",
            (0, 8),
            (j(3), 372),
            (j(13), 11.5),
            (j(37), j(23)),
            (55, 38),
            j(4.5, 0.1),
            3,
            0.9,
            rounding=(0.25, 0.4),
            flat_ends=0.4,
        ),
        long_bone("fibula", (-33, 30), (-27, j(392, 0.02)), (6, 6), (11, 11), (20, 30), 2.0, 3),
        round_bone("talus", (3, 390), 12, j(20, 0.05), 0, 4),
    ]
    envelopes = [
        Envelope((-30, -520), (0, 30), (0.0, 0.45, 1.0), (j(85), j(72), 55)),
        Envelope((0, 0), (0, 430), (0.0, 0.25, 0.7, 0.87, 1.0), (54, j(58), j(38), 34, 36)),
    ]
    return bones, envelopes


def _scaled_bone(b: Bone, s: float, fracturable: bool, physis: bool) -> Bone:
    sc = lambda t: tuple(float(x) * s for x in t)
    return Bone(
        b.name,
        sc(b.p0),
        sc(b.p1),
        sc(b.shaft),
        sc(b.ends),
        sc(b.flare),
        sc(b.cap),
        b.cortex * s,
        b.depth,
        b.flat_ends,
        b.level,
        b.digit,
        fracturable,
        physis,
    )


def _scaled_envelope(e: Envelope, s: float) -> Envelope:
    return Envelope(
        (e.p0[0] * s, e.p0[1] * s),
        (e.p1[0] * s, e.p1[1] * s),
        e.knots,
        tuple(r * s for r in e.radii),
        e.depth,
        e.cap * s,
        e.digit,
    )


def _length(p0: tuple[float, float], p1: tuple[float, float]) -> float:
    return float(np.hypot(p1[0] - p0[0], p1[1] - p0[1]))


def _segment_frame(p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    d = np.array(p1, dtype=float) - np.array(p0, dtype=float)
    d /= np.linalg.norm(d)
    n = np.array([-d[1], d[0]])
    m = np.eye(3)
    m[0, :2], m[1, :2] = d, n
    m[0, 2], m[1, 2] = -d @ p0, -n @ p0
    return m


def _cap(t: np.ndarray, cap: float) -> np.ndarray:
    """Rounds an end: 1 beyond `cap` from the end, an ellipse quadrant within it, 0 past the end."""
    if cap <= 0:
        return np.where(np.asarray(t) >= 0, np.float32(1), np.float32(0))
    tc = np.minimum(t, cap)
    return np.sqrt(np.clip(tc * (2 * cap - tc), 0.0, None)) / cap
