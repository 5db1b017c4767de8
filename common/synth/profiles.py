"""Per-site acquisition profiles: how hospitals differ (dose, detector, processing, case mix).

Federated learning is only interesting when clients differ, so every knob here mirrors a real
source of domain shift between sites rather than an arbitrary augmentation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from common.errors import ConfigError
from common.synth.anatomy import BODY_PARTS

FRACTURE_TYPES: tuple[str, ...] = ("transverse", "oblique", "comminuted", "hairline", "displaced")
BIT_DEPTHS: tuple[int, ...] = (10, 12, 14, 16)
PHOTOMETRICS: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class SiteProfile:
    """One hospital's imaging chain and case mix; every field is a realistic source of site shift."""

    name: str
    exposure: float = 25_000.0
    """Unattenuated photons per mm^2 at the detector; sets the quantum (Poisson) noise level."""
    electronic_noise: float = 3.0
    """Detector read-out noise, standard deviation in photons per pixel (old panels are worse)."""
    gamma: float = 1.0
    """Display gamma of the site's processing; < 1 lifts soft tissue."""
    edge_enhance: float = 0.6
    """Unsharp-mask gain of the site's processing (vendor 'detail contrast')."""
    equalization: float = 0.8
    """Share of the local soft-tissue thickness the processing removes (vendor dynamic-range compression)."""
    bit_depth: int = 12
    """Detector bits stored (DICOM BitsStored): 10, 12, 14 or 16."""
    pixel_spacing_mm: float = 0.5
    """Base pixel spacing at 512 px; body parts widen the field (hand x1.1 ... femur x1.9), smaller images are coarser."""
    photometric: str = "MONOCHROME2"
    """DICOM PhotometricInterpretation; MONOCHROME1 stores bone dark. PNGs are always bone-bright."""
    prevalence: float = 0.35
    """Fraction of images with at least one fracture."""
    body_parts: Mapping[str, float] = field(
        default_factory=lambda: {"hand": 0.3, "forearm": 0.3, "lower_leg": 0.25, "femur": 0.15}
    )
    """Relative frequency of each body part (weights, need not sum to 1)."""
    fracture_types: Mapping[str, float] = field(
        default_factory=lambda: {
            "transverse": 0.25,
            "oblique": 0.25,
            "comminuted": 0.1,
            "hairline": 0.25,
            "displaced": 0.15,
        }
    )
    """Relative frequency of each fracture type among fractures."""
    max_displacement_mm: float = 10.0
    """Upper bound of fragment translation; displaced fractures use 40-100 % of it."""
    max_angulation_deg: float = 20.0
    """Upper bound of fragment angulation; displaced fractures use 30-100 % of it."""
    multi_fracture_rate: float = 0.1
    """Probability that a fractured image has a second fracture on another bone."""
    age_years: tuple[int, int] = (18, 90)
    """Patient age range; children get smaller bones and open growth plates."""
    png_bits: int = 8
    """Bit depth of the display PNG written for the detector (8 or 16)."""

    def __post_init__(self) -> None:
        _check(
            bool(re.fullmatch(r"[a-z0-9_]{1,40}", self.name)),
            "name",
            "lower-case letters, digits, '_' (used as a folder name)",
            self.name,
        )
        _check(self.exposure > 0, "exposure", "> 0 photons/mm^2", self.exposure)
        _check(self.electronic_noise >= 0, "electronic_noise", ">= 0", self.electronic_noise)
        _check(0.2 <= self.gamma <= 3.0, "gamma", "in [0.2, 3]", self.gamma)
        _check(0.0 <= self.edge_enhance <= 3.0, "edge_enhance", "in [0, 3]", self.edge_enhance)
        _check(0.0 <= self.equalization < 1.0, "equalization", "in [0, 1)", self.equalization)
        _check(self.bit_depth in BIT_DEPTHS, "bit_depth", f"one of {BIT_DEPTHS}", self.bit_depth)
        _check(0.05 <= self.pixel_spacing_mm <= 2.0, "pixel_spacing_mm", "in [0.05, 2] mm", self.pixel_spacing_mm)
        _check(self.photometric in PHOTOMETRICS, "photometric", f"one of {PHOTOMETRICS}", self.photometric)
        _check(0.0 <= self.prevalence <= 1.0, "prevalence", "in [0, 1]", self.prevalence)
        object.__setattr__(self, "body_parts", _weights(self.body_parts, "body_parts", BODY_PARTS))
        object.__setattr__(self, "fracture_types", _weights(self.fracture_types, "fracture_types", FRACTURE_TYPES))
        _check(self.max_displacement_mm >= 0, "max_displacement_mm", ">= 0", self.max_displacement_mm)
        _check(0 <= self.max_angulation_deg <= 60, "max_angulation_deg", "in [0, 60]", self.max_angulation_deg)
        _check(0.0 <= self.multi_fracture_rate <= 1.0, "multi_fracture_rate", "in [0, 1]", self.multi_fracture_rate)
        lo, hi = self.age_years
        _check(1 <= lo <= hi <= 100, "age_years", "(min, max) with 1 <= min <= max <= 100", self.age_years)
        _check(self.png_bits in (8, 16), "png_bits", "8 or 16", self.png_bits)


def _check(ok: bool, name: str, expected: str, got: object) -> None:
    if not ok:
        raise ConfigError(f"SiteProfile.{name} must be {expected}, got {got!r}")


def _weights(value: Mapping[str, float], name: str, known: tuple[str, ...]) -> Mapping[str, float]:
    unknown = sorted(set(value) - set(known))
    _check(not unknown, name, f"keys from {known}", unknown)
    _check(
        all(w >= 0 for w in value.values()) and sum(value.values()) > 0,
        name,
        "non-negative weights with a positive sum",
        dict(value),
    )
    return MappingProxyType({k: float(w) for k, w in value.items() if w > 0})


PRESETS: Mapping[str, SiteProfile] = MappingProxyType(
    {
        p.name: p
        for p in (
            SiteProfile(name="general_hospital"),
            SiteProfile(
                name="trauma_center",
                exposure=30_000.0,
                electronic_noise=2.0,
                gamma=0.9,
                edge_enhance=0.9,
                equalization=0.85,
                bit_depth=14,
                pixel_spacing_mm=0.6,
                photometric="MONOCHROME1",
                prevalence=0.6,
                body_parts={"hand": 0.1, "forearm": 0.3, "lower_leg": 0.35, "femur": 0.25},
                fracture_types={
                    "transverse": 0.15,
                    "oblique": 0.2,
                    "comminuted": 0.25,
                    "hairline": 0.05,
                    "displaced": 0.35,
                },
                max_displacement_mm=20.0,
                max_angulation_deg=30.0,
                multi_fracture_rate=0.2,
                age_years=(16, 85),
                png_bits=16,
            ),
            SiteProfile(
                name="rural_clinic",
                exposure=8_000.0,
                electronic_noise=12.0,
                gamma=1.15,
                edge_enhance=0.3,
                equalization=0.5,
                bit_depth=10,
                pixel_spacing_mm=0.65,
                prevalence=0.25,
                body_parts={"hand": 0.35, "forearm": 0.35, "lower_leg": 0.2, "femur": 0.1},
                fracture_types={
                    "transverse": 0.3,
                    "oblique": 0.3,
                    "comminuted": 0.1,
                    "hairline": 0.2,
                    "displaced": 0.1,
                },
                max_displacement_mm=8.0,
                max_angulation_deg=15.0,
            ),
            SiteProfile(
                name="pediatric_wrist",
                exposure=20_000.0,
                electronic_noise=4.0,
                gamma=0.95,
                edge_enhance=0.7,
                equalization=0.7,
                bit_depth=16,
                pixel_spacing_mm=0.4,
                photometric="MONOCHROME1",
                prevalence=0.45,
                body_parts={"hand": 0.45, "forearm": 0.55},
                fracture_types={
                    "transverse": 0.35,
                    "oblique": 0.15,
                    "comminuted": 0.05,
                    "hairline": 0.35,
                    "displaced": 0.1,
                },
                max_displacement_mm=6.0,
                max_angulation_deg=25.0,
                multi_fracture_rate=0.25,
                age_years=(4, 15),
            ),
        )
    }
)

DEFAULT_SITES: tuple[str, ...] = ("general_hospital", "trauma_center", "rural_clinic")


def preset_names() -> list[str]:
    """Names accepted by `get_profile`, for CLI help and error messages."""
    return list(PRESETS)


def get_profile(name: str) -> SiteProfile:
    """Look up a preset by name; the error lists the known names so a typo is easy to fix."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown site profile {name!r}; known presets: {', '.join(PRESETS)}") from None
