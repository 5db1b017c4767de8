"""Inference shared by every backend (PyTorch, TFLite): one preprocessing and one postprocessing path."""

from common.inference.backend import Backend, TorchBackend, as_backend
from common.inference.load import BACKENDS, export_file, load_backend, tflite_path, weights_path
from common.inference.predictor import Prediction, Predictor

__all__ = [
    "BACKENDS",
    "Backend",
    "Prediction",
    "Predictor",
    "TorchBackend",
    "as_backend",
    "export_file",
    "load_backend",
    "tflite_path",
    "weights_path",
]
