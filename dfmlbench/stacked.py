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

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dfmlbench.adaptation import Params
from dfmlbench.inversion.generator import Generator
from dfmlbench.models.conv4 import Conv4

Stacked = dict[str, torch.Tensor]  # name -> (tasks, *parameter shape)


def batch_by_default(device: torch.device | str) -> bool:
    """Whether the stacked paths are the default on `device`. On a GPU one stacked kernel
    replaces many small launches. On the 2-core development CPU they measured slower than the
    one-at-a-time loops for recovery (FREE 1.7x, BiDf-MKD 1.6x slower over a cpu suite) and for
    5-shot meta-tests, equal for PURER (docs/performance.md): the loops are the CPU default."""
    return torch.device(device).type == "cuda"


def stackable(model: nn.Module) -> bool:
    """A Conv4 whose BN always uses batch statistics (the meta-learner form)."""
    return isinstance(model, Conv4) and all(
        not m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def stackable_teacher(model: nn.Module) -> bool:
    """A Conv4 teacher (used in eval mode: BN on its running statistics)."""
    return isinstance(model, Conv4) and not model.training and all(
        m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def stack(params: Params, tasks: int) -> Stacked:
    """The same parameters for every task, still differentiable w.r.t. `params`."""
    return {name: p.unsqueeze(0).expand(tasks, *p.shape) for name, p in params.items()}


def stack_modules(models: list[nn.Module]) -> tuple[Stacked, Stacked]:
    """Several same-shaped modules' parameters and buffers, stacked (detached)."""
    params = {name: torch.stack([dict(m.named_parameters())[name].detach() for m in models])
              for name, _ in models[0].named_parameters()}
    buffers = {name: torch.stack([dict(m.named_buffers())[name] for m in models])
               for name, _ in models[0].named_buffers()}
    return params, buffers


def _conv(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(T, B, C, H, W) through each task's own convolution (T, O, C, k, k)."""
    tasks, batch, channels, height, width = x.shape
    grouped = x.transpose(0, 1).reshape(batch, tasks * channels, height, width)
    out = F.conv2d(grouped, weight.reshape(-1, *weight.shape[2:]), None if bias is None else bias.reshape(-1),
                   stride=conv.stride, padding=conv.padding, groups=tasks)
    return out.view(batch, tasks, -1, *out.shape[2:]).transpose(0, 1)


def _batch_norm(x: torch.Tensor, bn: nn.BatchNorm2d, weight: torch.Tensor, bias: torch.Tensor,
                running: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Each task normalised with its own batch statistics (biased variance, as BN in train
    mode), or with its own running statistics (a teacher in eval mode)."""
    if running is None:
        mean = x.mean(dim=(1, 3, 4), keepdim=True)
        var = x.var(dim=(1, 3, 4), unbiased=False, keepdim=True)
    else:
        mean, var = (r[:, None, :, None, None] for r in running)
    scale = weight[:, None, :, None, None] * torch.rsqrt(var + bn.eps)
    return (x - mean) * scale + bias[:, None, :, None, None]


def _feature_statistics_gap(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    """Per task, ||mean - running mean|| + ||var - running var|| of a BN layer's input batch
    (losses.BatchNormStatistics for stacked teachers), (T,)."""
    mean, var = x.mean(dim=(1, 3, 4)), x.var(dim=(1, 3, 4), unbiased=False)
    return (torch.linalg.vector_norm(mean - running_mean, dim=1)
            + torch.linalg.vector_norm(var - running_var, dim=1))


def _per_image(function, x: torch.Tensor) -> torch.Tensor:
    """A parameter-free layer applied to (T, B, ...) as to a plain batch."""
    out = function(x.flatten(0, 1))
    return out.view(*x.shape[:2], *out.shape[1:])


def _sequential(module: nn.Module, prefix: str, params: Stacked, buffers: Stacked | None,
                x: torch.Tensor, statistics: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Run the layers of `module` (nested Sequentials of the types below) on stacked tasks.
    With `statistics`, each BN layer on running statistics appends DeepInversion's term."""
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            x = _sequential(child, f"{prefix}{name}.", params, buffers, x, statistics)
        return x
    if isinstance(module, nn.Conv2d):
        return _conv(x, module, params[f"{prefix}weight"], params.get(f"{prefix}bias"))
    if isinstance(module, nn.BatchNorm2d):
        running = None
        if module.track_running_stats and buffers is not None:
            running = (buffers[f"{prefix}running_mean"], buffers[f"{prefix}running_var"])
            if statistics is not None:
                statistics.append(_feature_statistics_gap(x, *running))
        return _batch_norm(x, module, params[f"{prefix}weight"], params[f"{prefix}bias"], running)
    if isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.MaxPool2d, nn.Upsample)):
        return _per_image(module, x)
    raise TypeError(f"no stacked form for {type(module).__name__}")


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(T, B, in) through each task's own linear layer (T, out, in)."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def forward(model: Conv4, params: Stacked, x: torch.Tensor, buffers: Stacked | None = None,
            statistics: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Logits (T, B, classes) of images (T, B, C, H, W), task t through parameters [t] (and,
    for teachers in eval mode, running statistics `buffers` [t]; `statistics` then collects
    each BN layer's DeepInversion term, (T,) per layer)."""
    features = _sequential(model.features, "features.", params, buffers, x, statistics)
    features = features.amax(dim=(-2, -1)) if model.any_size else features.flatten(2)
    return _linear(features, params["classifier.weight"], params["classifier.bias"])


def generate(generator: Generator, params: Stacked, z: torch.Tensor) -> torch.Tensor:
    """Images (T, B, C, H, W) from latent codes (T, B, nz), task t through generator [t]."""
    x = _linear(z, params["project.weight"], params["project.bias"])
    x = x.view(*z.shape[:2], -1, generator.init_size, generator.init_size)
    return _sequential(generator.body, "body.", params, None, x)


def task_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each task's mean cross-entropy, (T,)."""
    per_image = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    return per_image.view(labels.shape).mean(dim=1)


def sgd_steps(loss_of: Callable[[Stacked], torch.Tensor], params: Stacked, steps: int, lr: float,
              first_order: bool = False) -> Stacked:
    """`steps` plain SGD steps of every task on its own loss; `loss_of(params)` returns the
    (T,) per-task losses. As `adaptation.sgd_steps`: when `params` require grad the result
    stays differentiable w.r.t. them, through the steps (second order) or around them
    (`first_order`); otherwise no graph is kept between steps (the meta-test)."""
    track = any(p.requires_grad for p in params.values())
    if not track:
        params = {name: p.detach().requires_grad_() for name, p in params.items()}
    with torch.enable_grad():
        for _ in range(steps):
            grads = torch.autograd.grad(loss_of(params).sum(), list(params.values()),
                                        create_graph=track and not first_order)
            params = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
            if not track:
                params = {name: p.detach().requires_grad_() for name, p in params.items()}
    return params if track else {name: p.detach() for name, p in params.items()}


def sgd(model: Conv4, params: Stacked, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
        first_order: bool = False) -> Stacked:
    """Each task's SGD steps on cross-entropy over its own support (x, y): (T, B, ...), (T, B)."""
    return sgd_steps(lambda p: task_losses(forward(model, p, x), y), params, steps, lr, first_order)
