"""Detection and triage metrics for fracture detectors: box-level mAP/P/R/F1, image-level sens/spec/AUC, errors.

mAP uses Ultralytics' matching policy and `ap_per_class`, so numbers are comparable with its validator.
"""

from .error_lists import FalseNegative, FalsePositive, ImageError
from .evaluate import evaluate_detections
from .export import write_report
from .inputs import ImageResult
from .matching import IOU_THRESHOLDS
from .report import ClassMetrics, Curves, DetectionReport

__all__ = [
    "IOU_THRESHOLDS",
    "ClassMetrics",
    "Curves",
    "DetectionReport",
    "FalseNegative",
    "FalsePositive",
    "ImageError",
    "ImageResult",
    "evaluate_detections",
    "write_report",
]
