"""Opacus' hooks-based per-sample gradients without the batch gradient autograd computes beside them.

In hooks mode autograd still computes every weight's ordinary (summed) gradient, and `DPOptimizer` then replaces
it with the clipped, noised sum of the per-sample gradients: for a convolutional network, a whole weight-gradient
pass thrown away every step. Here a layer's trainable parameters stop requiring gradients while that layer runs
forward, so backward computes only what flows to its input; Opacus' own hooks and grad samplers still compute every
per-sample gradient from the saved activations and output gradients. A layer whose input carries no gradient (the
first one, or the first after frozen layers) keeps its parameters as they are, or its backward hook would not fire.
"""

from __future__ import annotations

from typing import Any

import torch
from opacus import GradSampleModule
from opacus.utils.module_utils import trainable_parameters
from torch import nn


class LeanGradSampleModule(GradSampleModule):
    """`GradSampleModule` (hooks) whose backward pass computes per-sample gradients only: `p.grad_sample` as in hooks
    mode, `p.grad` left None (except in layers fed by no gradient) for the DP optimiser to write the noised sum."""

    def __init__(self, m: nn.Module, **kwargs: Any):
        self._switched_off: dict[nn.Module, list[nn.Parameter]] = {}
        super().__init__(m, **kwargs)

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

    def capture_activations_hook(self, module: nn.Module, forward_input: list[torch.Tensor],
                                 forward_output: torch.Tensor) -> None:
        self._restore(module)  # before Opacus' hook, which looks at requires_grad
        super().capture_activations_hook(module, forward_input, forward_output)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().forward(*args, **kwargs)
        finally:  # a forward pass that raised must not leave parameters frozen
            for module in list(self._switched_off):
                self._restore(module)
