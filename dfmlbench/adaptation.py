"""Fast-weight adaptation with `torch.func`: plain SGD on a parameter dict, no module copies.

Written with `torch.func.grad` so the same code runs inside `vmap` (many episodes at once)
and composes for second-order meta-gradients.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

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
        with torch.no_grad():
            for name, param in copy_.named_parameters():
                param.copy_(params[name])
    return copy_


def forward(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    return functional_call(model, params, (x,))


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[Params], torch.Tensor]:
    return lambda params: F.cross_entropy(forward(model, params, x), y)


def sgd_steps(loss_of: Callable[[Params], torch.Tensor], params: Params, steps: int, lr: float,
              first_order: bool = False) -> Params:
    """`steps` plain SGD steps (no momentum, no weight decay) on `loss_of(params)`.

    When `params` require grad, the result stays differentiable with respect to them (and to
    any tensor `loss_of` captures): a loss on the adapted parameters back-propagates through
    the inner steps (second order), or around them with `first_order=True` (inner gradients
    treated as constants).
    """
    grad_fn = torch.func.grad(loss_of)
    for _ in range(steps):
        grads = grad_fn(params)
        params = {name: p - lr * (grads[name].detach() if first_order else grads[name])
                  for name, p in params.items()}
    return params


def sgd_adapt(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor,
              steps: int, lr: float, first_order: bool = False) -> Params:
    """The protocol's adaptation: SGD on CE over the support, all parameters (see `sgd_steps`)."""
    return sgd_steps(cross_entropy_loss(model, x, y), params, steps, lr, first_order)
