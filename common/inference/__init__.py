"""Inference shared by every backend (PyTorch, TFLite): one preprocessing and one postprocessing path."""

from common.inference.backend import Backend, TorchBackend, as_backend
from common.inference.load import load_backend, weights_path
from common.inference.predictor import Prediction, Predictor

__all__ = ["Backend", "TorchBackend", "as_backend", "load_backend", "weights_path", "Prediction", "Predictor"]
