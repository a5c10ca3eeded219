"""MAML on tasks drawn from a memory bank: the cross-task replay of FREE (free.md §5), also
used by PURER and BiDf-MKD. Second order by default; the inner loop is `sgd_adapt`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfmlbench import stacked
from dfmlbench.adaptation import Params, forward, sgd_adapt
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
    # All tasks of a meta-batch in one computation (dfmlbench.stacked) when the learner is a
    # batch-statistics Conv4; False = the one-task-at-a-time reference. Same gradient.
    batched: bool = True


@dataclass
class ReplayStats:
    metabatches: int
    tasks: int
    mean_accuracy: float


def maml_query_loss(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor,
                    yq: torch.Tensor, settings: ReplaySettings,
                    params: Params | None = None) -> tuple[torch.Tensor, float]:
    """Query CE after `inner_steps` SGD steps on the (normalised) support, and the query
    accuracy (%). Differentiable w.r.t. the model's parameters (or `params`) and the images."""
    params = dict(model.named_parameters()) if params is None else params
    adapted = sgd_adapt(model, params, xs, ys, settings.inner_steps, settings.inner_lr,
                        settings.first_order)
    logits = forward(model, adapted, xq)
    accuracy = 100.0 * float((logits.argmax(-1) == yq).float().mean())
    return F.cross_entropy(logits, yq), accuracy


def maml_task_loss(model: nn.Module, task: BankTask, normalize: Callable[[torch.Tensor], torch.Tensor],
                   settings: ReplaySettings, device: torch.device) -> tuple[torch.Tensor, float]:
    """`maml_query_loss` on a task drawn from the bank (uint8-quantised images in [0, 1])."""
    return maml_query_loss(model, normalize(task.support.to(device)), task.support_labels.to(device),
                           normalize(task.query.to(device)), task.query_labels.to(device), settings)


Episode = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # (xs, ys, xq, yq), normalised


def maml_episodes_loss(model: nn.Module, episodes: list[Episode], settings: ReplaySettings,
                       ) -> tuple[torch.Tensor, list[float]]:
    """`maml_query_loss` summed over episodes (the official summed meta-batch loss) and each
    episode's query accuracy. All episodes adapt together (dfmlbench.stacked) when the learner
    is a batch-statistics Conv4 and `settings.batched`; else one graph per episode, summed."""
    same_shapes = len({tuple(t.shape for t in episode) for episode in episodes}) == 1
    if not (settings.batched and same_shapes and stacked.stackable(model)):
        losses, accuracies = zip(*(maml_query_loss(model, *episode, settings) for episode in episodes))
        return torch.stack(list(losses)).sum(), list(accuracies)
    xs, ys, xq, yq = (torch.stack(part) for part in zip(*episodes))
    params = stacked.stack(dict(model.named_parameters()), len(episodes))
    adapted = stacked.sgd(model, params, xs, ys, settings.inner_steps, settings.inner_lr,  # type: ignore[arg-type]
                          settings.first_order)
    logits = stacked.forward(model, adapted, xq)  # type: ignore[arg-type]
    accuracies = (100.0 * (logits.argmax(-1) == yq).float().mean(dim=1)).tolist()
    return stacked.task_losses(logits, yq).sum(), accuracies


def maml_tasks_loss(model: nn.Module, tasks: list[BankTask], normalize: Callable[[torch.Tensor], torch.Tensor],
                    settings: ReplaySettings, device: torch.device) -> tuple[torch.Tensor, list[float]]:
    """`maml_episodes_loss` on tasks drawn from the bank (uint8-quantised images in [0, 1])."""
    return maml_episodes_loss(model, [(normalize(t.support.to(device)), t.support_labels.to(device),
                                       normalize(t.query.to(device)), t.query_labels.to(device))
                                      for t in tasks], settings)


def replay(model: nn.Module, optimizer: torch.optim.Optimizer, bank: MemoryBank,
           normalize: Callable[[torch.Tensor], torch.Tensor], settings: ReplaySettings,
           rng: np.random.Generator, device: torch.device) -> ReplayStats:
    """Meta-batches of bank tasks until `patience` meta-batches bring no new best mean train
    accuracy (or the cap). Returns what ran; does nothing while the bank is too small."""
    if len(bank.classes_with(settings.shot + settings.query)) < settings.way:
        return ReplayStats(0, 0, float("nan"))
    plateau = PlateauTrigger(settings.patience)
    metabatches = 0
    accuracies: list[float] = []
    while settings.max_metabatches is None or metabatches < settings.max_metabatches:
        optimizer.zero_grad(set_to_none=True)
        tasks = [bank.sample_task(settings.way, settings.shot, settings.query, rng)
                 for _ in range(settings.episode_batch)]
        if settings.batched and stacked.stackable(model):
            loss, batch_accuracy = maml_tasks_loss(model, tasks, normalize, settings, device)
            loss.backward()
        else:  # the reference: one graph at a time
            batch_accuracy = []
            for task in tasks:
                loss, accuracy = maml_task_loss(model, task, normalize, settings, device)
                loss.backward()  # gradients add up: the official summed loss, one graph at a time
                batch_accuracy.append(accuracy)
        optimizer.step()
        metabatches += 1
        accuracies.append(float(np.mean(batch_accuracy)))
        if plateau.stalled(accuracies[-1]):
            break
    return ReplayStats(metabatches, metabatches * settings.episode_batch, float(np.mean(accuracies)))


class PlateauTrigger:
    """True once `patience` consecutive values fail to beat the running max; then it resets
    (replay's stopping rule, PURER's curriculum trigger, BiDf-MKD's plateau event rule)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best: float | None = None
        self.stale = 0

    def stalled(self, value: float) -> bool:
        if self.best is None or value > self.best:
            self.best, self.stale = value, 0
            return False
        self.stale += 1
        if self.stale >= self.patience:
            self.best, self.stale = None, 0
            return True
        return False
