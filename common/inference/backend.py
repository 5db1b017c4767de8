"""What a detector backend is: network input in, the head's raw output out; nothing else differs between them."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Backend(Protocol):
    """A detector runtime. Input: (B, 3, S, S) float in [0, 1], letterboxed. Output: (B, 4 + nc, anchors) with
    boxes as centre-x, centre-y, width, height in network pixels and per-class scores, as Ultralytics' Detect
    head returns in eval mode. Decoding, NMS and the operating point are applied by the caller, the same for all.
    """

    names: dict[int, str]
    imgsz: int

    def __call__(self, img: torch.Tensor) -> torch.Tensor: ...


class TorchBackend:
    """The PyTorch model as a backend (eval mode, no gradients)."""

    def __init__(self, model: nn.Module, device: torch.device | None = None, imgsz: int = 640):
        self.device = device or torch.device("cpu")
        # Never move weights inside inference mode: on a GPU the moved parameters and buffers would become inference
        # tensors, and the next load_state_dict into this (cached, reused) model fails.
        with torch.inference_mode(False):
            self.model = model.to(self.device).eval()
        self.names = dict(model.names)
        self.imgsz = imgsz

    @torch.inference_mode()
    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.model(img.to(self.device))[0]


def as_backend(model: nn.Module | Backend, device: torch.device | None = None, imgsz: int = 640) -> Backend:
    """A backend for `model`: modules are wrapped, backends pass through."""
    return (
        model if isinstance(model, Backend) and not isinstance(model, nn.Module) else TorchBackend(model, device, imgsz)
    )
