"""MAML on tasks drawn from a memory bank: the cross-task replay of FREE (free.md §5), also
used by PURER and BiDf-MKD. Second order by default; the inner loop is `sgd_adapt`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfmlbench.adaptation import forward, sgd_adapt
from dfmlbench.inversion.bank import BankTask, MemoryBank


@dataclass(frozen=True)
class ReplaySettings:
    way: int = 5
    shot: int = 1
    query: int = 15
    inner_steps: int = 5
    inner_lr: float = 0.01
    episode_batch: int = 10  # task losses summed per meta-step (official, D21)
    patience: int = 10  # stop after this many meta-batches without a new best train accuracy
    max_metabatches: int | None = None  # a cap for CPU budgets; None = official (unbounded)
    first_order: bool = False


@dataclass
class ReplayStats:
    metabatches: int
    tasks: int
    mean_accuracy: float


def maml_task_loss(model: nn.Module, task: BankTask, normalize: Callable[[torch.Tensor], torch.Tensor],
                   settings: ReplaySettings, device: torch.device) -> tuple[torch.Tensor, float]:
    """Query CE after `inner_steps` SGD steps on the support, differentiable w.r.t. the model."""
    params = dict(model.named_parameters())
    xs, xq = normalize(task.support.to(device)), normalize(task.query.to(device))
    ys, yq = task.support_labels.to(device), task.query_labels.to(device)
    adapted = sgd_adapt(model, params, xs, ys, settings.inner_steps, settings.inner_lr,
                        settings.first_order)
    logits = forward(model, adapted, xq)
    accuracy = 100.0 * float((logits.argmax(-1) == yq).float().mean())
    return F.cross_entropy(logits, yq), accuracy


def replay(model: nn.Module, optimizer: torch.optim.Optimizer, bank: MemoryBank,
           normalize: Callable[[torch.Tensor], torch.Tensor], settings: ReplaySettings,
           rng: np.random.Generator, device: torch.device) -> ReplayStats:
    """Meta-batches of bank tasks until `patience` meta-batches bring no new best mean train
    accuracy (or the cap). Returns what ran; does nothing while the bank is too small."""
    if len(bank.classes_with(settings.shot + settings.query)) < settings.way:
        return ReplayStats(0, 0, float("nan"))
    best: float | None = None
    stale = metabatches = 0
    accuracies: list[float] = []
    while stale < settings.patience:
        if settings.max_metabatches is not None and metabatches >= settings.max_metabatches:
            break
        optimizer.zero_grad(set_to_none=True)
        batch_accuracy = []
        for _ in range(settings.episode_batch):
            task = bank.sample_task(settings.way, settings.shot, settings.query, rng)
            loss, accuracy = maml_task_loss(model, task, normalize, settings, device)
            loss.backward()  # gradients add up: the official summed loss, one graph at a time
            batch_accuracy.append(accuracy)
        optimizer.step()
        metabatches += 1
        mean = float(np.mean(batch_accuracy))
        accuracies.append(mean)
        if best is None or mean > best:
            best, stale = mean, 0
        else:
            stale += 1
    return ReplayStats(metabatches, metabatches * settings.episode_batch, float(np.mean(accuracies)))
