"""Mixed precision and memory layout of a training step.

bf16 autocast runs the convolutions in bfloat16 while the weights, the optimiser state and the loss stay fp32
(bf16 has fp32's range, so no loss scaling is needed). DP-SGD always runs in fp32: its per-sample gradients and
clipping norms are what the privacy guarantee rests on, and no test shows them equal under bf16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from common.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class StepFormat:
    """How one training step runs: autocast dtype (None: fp32) and whether tensors are channels-last."""

    autocast: torch.dtype | None
    channels_last: bool

    def context(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)

    def describe(self) -> str:
        return f"{'bf16 autocast' if self.autocast else 'fp32'}{', channels-last' if self.channels_last else ''}"


def step_format(
    precision: str, channels_last: bool | None, device: torch.device, private: bool, group_norm: bool = False
) -> StepFormat:
    """`auto`: bf16 on CUDA, fp32 on the CPU (bf16 there is an option: see docs/training.md). Channels-last by
    default on CUDA, where cuDNN's bf16 convolutions want it, except for GroupNorm models: on the H200 a GroupNorm
    FedAvg round took 24 s in bf16 channels-last against 5.4 s for BatchNorm and 14 s for the fp32 contiguous DP
    round (docs/benchmarks.md). DP-SGD: fp32, contiguous, whatever was asked."""
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision: expected one of {PRECISIONS}, got {precision!r}")
    if private:
        return StepFormat(None, False)
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if bf16 and device.type == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision=bf16: this GPU has no bfloat16 support; use fp32")
    auto_layout = device.type == "cuda" and not group_norm
    return StepFormat(torch.bfloat16 if bf16 else None, auto_layout if channels_last is None else bool(channels_last))


def to_fp32(x: Any) -> Any:
    """Floating tensors in a (nested) model output back to fp32, so the loss is computed in full precision."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: to_fp32(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_fp32(v) for v in x)
    return x


@contextlib.contextmanager
def memory_format(model: torch.nn.Module, fmt: StepFormat) -> Iterator[None]:
    """Channels-last for the step's duration; the (reused) model goes back to the ordinary layout afterwards."""
    if not fmt.channels_last:
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)
