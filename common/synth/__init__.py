"""Procedural synthetic radiographs with fracture ground truth, per-site acquisition profiles."""

from common.synth.anatomy import BODY_PARTS
from common.synth.fracture import Fracture
from common.synth.profiles import DEFAULT_SITES, FRACTURE_TYPES, PRESETS, SiteProfile, get_profile, preset_names
from common.synth.render import SynthImage, render_radiograph
from common.synth.writer import generate_dataset

__all__ = [
    "BODY_PARTS",
    "DEFAULT_SITES",
    "FRACTURE_TYPES",
    "PRESETS",
    "Fracture",
    "SiteProfile",
    "SynthImage",
    "generate_dataset",
    "get_profile",
    "preset_names",
    "render_radiograph",
]
