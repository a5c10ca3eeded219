"""Many tasks' Conv4s in one computation: each task has its own parameters, stacked on a
leading task axis, and every layer runs once for all tasks (grouped convolution, batched
matrix product, per-task batch-statistics BN).

Why not `torch.func.vmap`: on a CPU its batching rules for convolution backward and BN cost
as much as they save (measured, docs/performance.md), while these plain kernels are dense.
Summing the tasks' losses gives each task's gradient in its own slice, because no
computation mixes tasks; stacking a shared θ with `expand` makes a meta-gradient the sum of
the tasks' meta-gradients, as MAML's summed loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfmlbench.adaptation import Params
from dfmlbench.models.conv4 import Conv4

Stacked = dict[str, torch.Tensor]  # name -> (tasks, *parameter shape)


def stackable(model: nn.Module) -> bool:
    """A Conv4 whose BN always uses batch statistics (the meta-learner form)."""
    return isinstance(model, Conv4) and all(
        not m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def stack(params: Params, tasks: int) -> Stacked:
    """The same parameters for every task, still differentiable w.r.t. `params`."""
    return {name: p.unsqueeze(0).expand(tasks, *p.shape) for name, p in params.items()}


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: int) -> torch.Tensor:
    """(T, B, C, H, W) through each task's own convolution (T, O, C, k, k)."""
    tasks, batch, channels, height, width = x.shape
    grouped = x.transpose(0, 1).reshape(batch, tasks * channels, height, width)
    out = F.conv2d(grouped, weight.reshape(-1, *weight.shape[2:]), bias.reshape(-1),
                   padding=padding, groups=tasks)
    return out.view(batch, tasks, -1, *out.shape[2:]).transpose(0, 1)


def _batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Each task normalised with its own batch statistics (biased variance, as BN in train mode)."""
    mean = x.mean(dim=(1, 3, 4), keepdim=True)
    var = x.var(dim=(1, 3, 4), unbiased=False, keepdim=True)
    scale = weight[:, None, :, None, None] * torch.rsqrt(var + eps)
    return (x - mean) * scale + bias[:, None, :, None, None]


def forward(model: Conv4, params: Stacked, x: torch.Tensor) -> torch.Tensor:
    """Logits (T, B, classes) of images (T, B, C, H, W), task t through parameters [t]."""
    for index, block in enumerate(model.features):
        conv, bn, _, pool = block
        prefix = f"features.{index}"
        x = _conv(x, params[f"{prefix}.0.weight"], params[f"{prefix}.0.bias"], conv.padding[0])
        x = F.relu(_batch_norm(x, params[f"{prefix}.1.weight"], params[f"{prefix}.1.bias"], bn.eps))
        tasks, batch = x.shape[:2]
        x = F.max_pool2d(x.flatten(0, 1), pool.kernel_size)
        x = x.view(tasks, batch, *x.shape[1:])
    features = x.flatten(2)
    return torch.baddbmm(params["classifier.bias"].unsqueeze(1), features,
                         params["classifier.weight"].transpose(1, 2))


def task_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each task's mean cross-entropy, (T,)."""
    per_image = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    return per_image.view(labels.shape).mean(dim=1)


def sgd(model: Conv4, params: Stacked, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
        first_order: bool = False) -> Stacked:
    """Each task's `steps` plain SGD steps on its own support (x, y): (T, B, ...), (T, B).

    As `adaptation.sgd_steps`: when `params` require grad the result stays differentiable
    w.r.t. them, through the steps (second order) or around them (`first_order`); otherwise
    no graph is kept between steps (the meta-test).
    """
    track = any(p.requires_grad for p in params.values())
    if not track:
        params = {name: p.detach().requires_grad_() for name, p in params.items()}
    with torch.enable_grad():
        for _ in range(steps):
            loss = task_losses(forward(model, params, x), y).sum()
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=track and not first_order)
            params = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
            if not track:
                params = {name: p.detach().requires_grad_() for name, p in params.items()}
    return params if track else {name: p.detach() for name, p in params.items()}
