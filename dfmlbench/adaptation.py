"""Fast-weight adaptation: plain SGD on a parameter dict through `functional_call`, no module
copies; second-order meta-gradients through `torch.autograd.grad(create_graph=True)`.

(`torch.func.grad` did the same with more per-operation cost: 1-shot meta-tests ran 1.2x
slower; nothing here runs under `vmap` any more, docs/performance.md.)
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from dfmlbench.models import copy_parameters

Params = dict[str, torch.Tensor]


def parameters_of(model: nn.Module) -> Params:
    """The model's learnable parameters as a detached dict (the starting point of adaptation)."""
    return {name: p.detach() for name, p in model.named_parameters()}


def frozen_copy(model: nn.Module, params: Params | None = None) -> nn.Module:
    """A copy of `model` (with `params` loaded, if given) that no gradient reaches: a student
    several tasks may call at once (a module call mutates nothing in a batch-statistics model,
    where functional_call would swap the shared module's attributes)."""
    copy_ = copy.deepcopy(model).requires_grad_(False)
    if params is not None:
        copy_parameters(copy_, params)
    return copy_


def forward(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    return functional_call(model, params, (x,))


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[Params], torch.Tensor]:
    return lambda params: F.cross_entropy(forward(model, params, x), y)


def sgd_steps(loss_of: Callable[[Params], torch.Tensor], params: Params, steps: int, lr: float,
              first_order: bool = False) -> Params:
    """`steps` plain SGD steps (no momentum, no weight decay) on `loss_of(params)`.

    With autograd enabled, the result stays differentiable with respect to `params` (where they
    require grad) and to any tensor `loss_of` captures: a loss on the adapted parameters
    back-propagates through the inner steps (second order), or around them with
    `first_order=True` (inner gradients treated as constants). Under `torch.no_grad()` (the
    meta-test) no graph is kept between steps and the result is detached.
    """
    keep_graph = torch.is_grad_enabled()
    params = {name: p if p.requires_grad else p.detach().requires_grad_() for name, p in params.items()}
    with torch.enable_grad():
        for _ in range(steps):
            grads = torch.autograd.grad(loss_of(params), list(params.values()),
                                        create_graph=keep_graph and not first_order)
            params = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
            if not keep_graph:
                params = {name: p.detach().requires_grad_() for name, p in params.items()}
    return params if keep_graph else {name: p.detach() for name, p in params.items()}


def sgd_adapt(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor,
              steps: int, lr: float, first_order: bool = False) -> Params:
    """The protocol's adaptation: SGD on CE over the support, all parameters (see `sgd_steps`)."""
    return sgd_steps(cross_entropy_loss(model, x, y), params, steps, lr, first_order)
