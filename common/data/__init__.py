"""Dataset input: find images and labels, read them robustly, and check a whole dataset before training."""

from common.data.check import CheckReport, SplitCounts, check_dataset
from common.data.images import IMAGE_SUFFIXES, decode_image, inspect_image, is_image_file, read_image
from common.data.labels import BOX_TOLERANCE, read_labels, validate_labels
from common.data.problems import Problem
from common.data.spec import DatasetSpec, label_path, load_spec

__all__ = [
    "BOX_TOLERANCE",
    "IMAGE_SUFFIXES",
    "CheckReport",
    "DatasetSpec",
    "Problem",
    "SplitCounts",
    "check_dataset",
    "decode_image",
    "inspect_image",
    "is_image_file",
    "label_path",
    "load_spec",
    "read_image",
    "read_labels",
    "validate_labels",
]
