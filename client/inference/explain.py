"""Grad-CAM heatmap of what drove the detector's finding, in the original image's pixels.

Implemented directly on the PyTorch model (hooks on the three feature maps the Detect head reads) rather than with
the `grad-cam` package: that package needs opencv-python-headless, which replaces Ultralytics' opencv-python
(both install the `cv2` module), and its detector support needs the same wrapper we would write anyway.
Target: the sum of the class scores the operating point reports (every finding), or the single highest score
when there is none, so a negative image still shows where the model looked hardest.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from common.data.augment import letterbox
from common.inference.backend import Backend, TorchBackend
from common.inference.predictor import to_input


def can_explain(backend: Backend) -> bool:
    """Grad-CAM needs gradients through the network: only the PyTorch backend has them."""
    return isinstance(backend, TorchBackend)


def gradcam(backend: TorchBackend, image: np.ndarray, conf: float) -> np.ndarray:
    """Heatmap in [0, 1], float32, same shape as the grey uint8 `image`."""
    model = backend.model
    head = model.model[-1]
    feats: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        feats.append(output)

    hooks = [model.model[i].register_forward_hook(keep) for i in head.f]
    lb, gain, pad = letterbox(image, backend.imgsz)
    x = to_input(lb).unsqueeze(0).to(backend.device)
    head.shape = None  # Detect caches anchors made under inference_mode, unusable with autograd: rebuild them
    try:
        with torch.enable_grad():
            x.requires_grad_(True)  # activations need a graph even when the weights are frozen
            scores = model(x)[0][0, 4:]  # (nc, anchors), sigmoid class scores
            hit = scores >= conf
            target = scores[hit].sum() if bool(hit.any()) else scores.max()
            # gradients down to the head's inputs only: no backward pass through the backbone, no weight grads
            grads = torch.autograd.grad(target, feats, allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
    size = backend.imgsz
    cam = torch.zeros(size, size)
    for f, g in zip(feats, grads):
        if g is None:
            continue
        weights = g.mean(dim=(2, 3), keepdim=True)
        level = F.relu((weights * f).sum(dim=1, keepdim=True)).detach().float().cpu()
        cam += F.interpolate(level, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return _unletterbox(cam.numpy(), gain, pad, image.shape[:2])


def _unletterbox(cam: np.ndarray, gain: float, pad: tuple[float, float], orig_hw: tuple[int, int]) -> np.ndarray:
    import cv2

    h, w = orig_hw
    x0, y0 = int(round(pad[0])), int(round(pad[1]))
    crop = cam[y0 : y0 + max(1, int(round(h * gain))), x0 : x0 + max(1, int(round(w * gain)))]
    out = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
    top = float(out.max())
    return (out / top).astype(np.float32) if top > 0 else np.zeros((h, w), np.float32)
