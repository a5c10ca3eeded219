"""A frozen copy of the CPU default paths before the task-axis kernel layer (commit e30f060),
the baseline the speed benchmarks measure against in the same process. Do not optimise this
file: it is the yardstick. It reuses only library pieces whose code did not change (the
augmentation, the losses, the Adam optimiser) and keeps its own NCHW generator forward.

- `recover_teachers`: FIVE's b recoveries, one deep-copied generator per teacher, in a loop;
- `replay_tasks`: second-order MAML replay, one graph and one backward() per task;
- `meta_test`: the meta-test, `vmap` adaptation of a chunk of episodes (the 1-shot default),
  or the one-episode loop with a module copy and torch.optim.SGD (faster at 5-shot);
- `frozen_model`, `frozen_generator`: a model (Conv4 blocks ReLU before max-pool) and the
  generator (x2 upsampling, then a 3x3 convolution) as the library built them then, for every
  network the baseline paths run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from dfmlbench.inversion.losses import agreement_masked_kl


def frozen_model(model: nn.Module) -> nn.Module:
    """A copy of `model` with its Conv4 blocks in their former order, conv-BN-ReLU-max-pool
    (the same function and parameters: ReLU and max commute)."""
    frozen = copy.deepcopy(model)
    for block in frozen.modules():
        if isinstance(block, nn.Sequential) and len(block) == 4 and isinstance(block[3], nn.ReLU):
            block[2], block[3] = block[3], block[2]
    return frozen


def frozen_generator(generator: nn.Module) -> nn.Module:
    """A copy of the generator with each fused upsampling convolution as it was: nn.Upsample,
    then nn.Conv2d with the same weights (the same function)."""
    from dfmlbench.inversion.generator import UpsampledConv2d

    frozen = copy.deepcopy(generator)
    body = []
    for module in frozen.body:
        if isinstance(module, UpsampledConv2d):
            conv = nn.Conv2d(module.in_channels, module.out_channels, 3, padding=1, bias=module.bias is not None)
            conv.load_state_dict(module.state_dict())
            body += [nn.Upsample(scale_factor=2), conv.to(module.weight)]
        else:
            body.append(module)
    frozen.body = nn.Sequential(*body)
    return frozen


def generate(generator: nn.Module, z: torch.Tensor) -> torch.Tensor:
    x = generator.project(z).view(len(z), -1, generator.init_size, generator.init_size)
    return generator.body(x)


def sgd_adapt(model, params, x, y, steps, lr, first_order=False):
    grad_fn = torch.func.grad(lambda p: F.cross_entropy(functional_call(model, p, (x,)), y))
    for _ in range(steps):
        grads = grad_fn(params)
        params = {n: p - lr * (grads[n].detach() if first_order else grads[n]) for n, p in params.items()}
    return params


def inversion_loss(images, labels, teacher, student, augment, settings, rng):
    x = augment(images, rng)
    teacher_logits = teacher(x)
    loss = settings.ce_weight * F.cross_entropy(teacher_logits, labels)
    if student is not None and settings.adv_weight:
        with torch.no_grad():
            student_logits = student(x)
        loss = loss - settings.adv_weight * agreement_masked_kl(student_logits, teacher_logits, settings.adv_quirk)
    return loss


def recover_task(generator, teacher, labels, nz, student, augment, settings, rng):
    """Adapt `generator` in place for k steps, then images and the meta-gradient (recover_at k)."""
    z = torch.randn(len(labels), nz, generator=rng).to(labels.device).requires_grad_()
    optimizer = torch.optim.Adam([{"params": list(generator.parameters()), "lr": settings.generator_lr},
                                  {"params": [z], "lr": settings.z_lr}], betas=settings.betas)

    def loss_and_grads():
        optimizer.zero_grad(set_to_none=True)
        images = generate(generator, z)
        inversion_loss(images, labels, teacher, student, augment, settings, rng).backward()
        return images.detach(), {n: p.grad.detach().clone() for n, p in generator.named_parameters()}

    for _ in range(settings.steps):
        loss_and_grads()
        optimizer.step()
    return loss_and_grads()


def recover_teachers(generator, teachers, labels, nz, student_model, augment, settings, rng):
    """One epoch's recoveries: a generator copy per teacher, against the detached base learner."""
    params = {n: p.detach() for n, p in student_model.named_parameters()}
    student = lambda x: functional_call(student_model, params, (x,))  # noqa: E731
    return [recover_task(copy.deepcopy(generator), teacher, labels, nz, student, augment, settings, rng)
            for teacher in teachers]


def replay_tasks(model: nn.Module, tasks, normalize: Callable, inner_steps: int, inner_lr: float,
                 device: torch.device | str = "cpu") -> list[float]:
    """One meta-batch's gradients accumulated task by task (second order); query accuracies."""
    accuracies = []
    for task in tasks:
        xs, xq = normalize(task.support.to(device)), normalize(task.query.to(device))
        ys, yq = task.support_labels.to(device), task.query_labels.to(device)
        params = dict(model.named_parameters())
        adapted = sgd_adapt(model, params, xs, ys, inner_steps, inner_lr)
        logits = functional_call(model, adapted, (xq,))
        F.cross_entropy(logits, yq).backward()
        accuracies.append(100.0 * float((logits.argmax(-1) == yq).float().mean()))
    return accuracies


@dataclass(frozen=True)
class EpisodeBatch:
    support: torch.Tensor  # float (E, way*shot, C, H, W)
    support_labels: torch.Tensor  # int64 (E, way*shot)
    query: torch.Tensor  # float (E, way*query, C, H, W)
    query_labels: torch.Tensor
    first: int  # index of the first episode of the batch in its EpisodeSet


def episode_batches(dataset, episodes, chunk: int, device: torch.device | str) -> Iterator[EpisodeBatch]:
    """Episodes `chunk` at a time, as normalised NCHW tensors on `device`."""
    labels = episodes.labels().to(device)
    n_support = episodes.support_size
    for first in range(0, len(episodes), chunk):
        idx = episodes.indices[first:first + chunk]
        images = dataset.normalize(dataset.images[torch.from_numpy(idx.reshape(-1))], device)
        images = images.view(len(idx), idx.shape[1], *images.shape[1:])
        tiled = labels.expand(len(idx), -1)
        yield EpisodeBatch(images[:, :n_support], tiled[:, :n_support],
                           images[:, n_support:], tiled[:, n_support:], first)


def meta_test(model: nn.Module, dataset, episodes, steps: int = 10, lr: float = 0.01, chunk: int = 20,
              loop: bool = False, device: torch.device | str = "cpu") -> np.ndarray:
    """Per-episode accuracies: `vmap` over chunks of episodes, or (loop) one episode at a time."""
    accuracies = np.empty(len(episodes))
    if loop:
        for batch in episode_batches(dataset, episodes, 1, device):
            copy_ = copy.deepcopy(model).to(device).train()
            optimizer = torch.optim.SGD(copy_.parameters(), lr=lr)
            xs, ys = batch.support[0], batch.support_labels[0]
            for _ in range(steps):
                optimizer.zero_grad()
                F.cross_entropy(copy_(xs), ys).backward()
                optimizer.step()
            with torch.no_grad():
                hits = copy_(batch.query[0]).argmax(-1) == batch.query_labels[0]
            accuracies[batch.first] = 100.0 * float(hits.float().mean())
        return accuracies
    model = copy.deepcopy(model).to(device)
    init = {n: p.detach() for n, p in model.named_parameters()}
    for batch in episode_batches(dataset, episodes, chunk, device):
        with torch.no_grad():
            adapted = vmap(lambda xs, ys: sgd_adapt(model, init, xs, ys, steps, lr))(batch.support, batch.support_labels)
            for i in range(len(batch.support)):
                own = {n: p[i] for n, p in adapted.items()}
                hits = functional_call(model, own, (batch.query[i],)).argmax(-1) == batch.query_labels[i]
                accuracies[batch.first + i] = 100.0 * float(hits.float().mean())
    return accuracies
