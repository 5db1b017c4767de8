"""Opacus' hooks-based per-sample gradients without the batch gradient autograd computes beside them.

In hooks mode autograd still computes every weight's ordinary (summed) gradient, and `DPOptimizer` then replaces
it with the clipped, noised sum of the per-sample gradients: for a convolutional network, a whole weight-gradient
pass thrown away every step. Here a layer's trainable parameters stop requiring gradients while that layer runs
forward, so backward computes only what flows to its input; Opacus' own hooks and grad samplers still compute every
per-sample gradient from the saved activations and output gradients. A layer whose input carries no gradient (the
first one, or the first after frozen layers) keeps its parameters as they are, or its backward hook would not fire.

Convolutions also get their own grad sampler (Opacus' extension point, the `GRAD_SAMPLERS` table, for this class
only): Opacus unfolds every 3x3 input into a 9x larger matrix before one matrix product per image; here 1x1
convolutions are one batched matrix product straight from the activations, and the others one weight-gradient
convolution per image (the kernel autograd runs for the batch gradient). Same values, less memory traffic.
"""

from __future__ import annotations

from typing import Any

import torch
from opacus import GradSampleModule
from opacus.grad_sample.conv import compute_conv_grad_sample
from opacus.utils.module_utils import trainable_parameters
from torch import nn


def conv2d_grad_sample(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of a Conv2d's weight and bias (see the module docstring); string paddings, non-zero
    padding modes and empty batches go to Opacus' sampler."""
    x = activations[0].to(backprops.dtype)
    n = x.shape[0]
    if n == 0 or isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        return compute_conv_grad_sample(layer, activations, backprops)
    grads: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        if layer.kernel_size == (1, 1) and layer.stride == (1, 1) and layer.padding == (0, 0) and layer.groups == 1:
            w = torch.bmm(backprops.reshape(n, backprops.shape[1], -1), x.reshape(n, x.shape[1], -1).transpose(1, 2))
        else:
            w = torch.stack(
                [
                    torch.ops.aten.convolution_backward(
                        backprops[i : i + 1],
                        x[i : i + 1],
                        layer.weight,
                        None,
                        layer.stride,
                        layer.padding,
                        layer.dilation,
                        False,
                        [0, 0],
                        layer.groups,
                        [False, True, False],
                    )[1]
                    for i in range(n)
                ]
            )
        grads[layer.weight] = w.view(n, *layer.weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = backprops.sum(dim=(2, 3))
    return grads


class LeanGradSampleModule(GradSampleModule):
    """`GradSampleModule` (hooks) whose backward pass computes per-sample gradients only: `p.grad_sample` as in hooks
    mode, `p.grad` left None (except in layers fed by no gradient) for the DP optimiser to write the noised sum."""

    GRAD_SAMPLERS = {**GradSampleModule.GRAD_SAMPLERS, nn.Conv2d: conv2d_grad_sample}

    def __init__(self, m: nn.Module, **kwargs: Any):
        super().__init__(m, **kwargs)
        self._switched_off: dict[nn.Module, list[nn.Parameter]] = {}  # layers running forward right now

    def add_hooks(self, **kwargs: Any) -> None:
        super().add_hooks(**kwargs)
        for module in self.iterate_submodules(self._module):  # the modules Opacus hooked; removed with its hooks
            self.autograd_grad_sample_hooks.append(module.register_forward_pre_hook(self._without_batch_grad))

    def _without_batch_grad(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        if not (self.hooks_enabled and module.training and torch.is_grad_enabled()):
            return
        if any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs):
            params = [p for _, p in trainable_parameters(module)]
            for p in params:
                p.requires_grad_(False)
            self._switched_off[module] = params

    def _restore(self, module: nn.Module) -> None:
        for p in self._switched_off.pop(module, ()):
            p.requires_grad_(True)

    def capture_activations_hook(
        self, module: nn.Module, forward_input: list[torch.Tensor], forward_output: torch.Tensor
    ) -> None:
        self._restore(module)  # before Opacus' hook, which looks at requires_grad
        super().capture_activations_hook(module, forward_input, forward_output)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().forward(*args, **kwargs)
        finally:  # a forward pass that raised must not leave parameters frozen
            for module in list(self._switched_off):
                self._restore(module)
