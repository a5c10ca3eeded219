"""MAML on tasks drawn from a memory bank: the cross-task replay of FREE (free.md §5), also
used by PURER and BiDf-MKD. Second order by default; the inner loop is `sgd_adapt`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfmlbench.adaptation import Params, forward, sgd_adapt
from dfmlbench.inversion.bank import BankTask, MemoryBank
from dfmlbench.kernels import PerThread, in_layout, task_map


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

    @classmethod
    def from_settings(cls, settings: dict[str, Any], way: int, shot: int, **shared: Any) -> ReplaySettings:
        """A method's replay settings, one vocabulary for FREE, PURER and BiDf-MKD: the field
        `f` is the method setting `replay_f`. `shared` gives fields the method shares with its
        other parts under its own names (BiDf-MKD's `episode_batch`); fields a method leaves
        undeclared keep the defaults above."""
        declared = {f.name: settings[REPLAY_PREFIX + f.name] for f in fields(cls)
                    if REPLAY_PREFIX + f.name in settings}
        return cls(**{**declared, **shared, "way": way, "shot": shot})


REPLAY_PREFIX = "replay_"


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


Episode = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # (xs, ys, xq, yq), normalised


def bank_episodes(tasks: list[BankTask], normalize: Callable[[torch.Tensor], torch.Tensor],
                  device: torch.device) -> list[Episode]:
    """Tasks drawn from the bank (uint8-quantised images in [0, 1]) as normalised episodes."""
    return [(normalize(t.support.to(device)), t.support_labels.to(device),
             normalize(t.query.to(device)), t.query_labels.to(device)) for t in tasks]


def maml_meta_gradient(model: nn.Module, episodes: list[Episode], settings: ReplaySettings
                       ) -> tuple[list[torch.Tensor], list[float]]:
    """The gradient of the summed `maml_query_loss` over `episodes` w.r.t. the model's
    parameters (the official summed meta-batch loss), one tensor per parameter, and each
    episode's query accuracy. The episodes are a task axis (dfmlbench.kernels): each one's
    gradient is taken on its own, and they are summed in episode order."""
    params = dict(model.named_parameters())
    modules = PerThread(lambda: copy.deepcopy(model))  # structure only: the parameters are `params`

    def episode_gradient(episode: Episode) -> tuple[tuple[torch.Tensor, ...], float]:
        xs, ys, xq, yq = episode
        loss, accuracy = maml_query_loss(modules.get(), in_layout(xs), ys, in_layout(xq), yq, settings, params)
        return torch.autograd.grad(loss, list(params.values())), accuracy

    results = task_map(episode_gradient, episodes, next(model.parameters()).device)
    return summed_per_parameter([grads for grads, _ in results]), [accuracy for _, accuracy in results]


def summed_per_parameter(per_task: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    """Each parameter's gradient summed over the tasks, in task order (the summed-loss gradient)."""
    return [torch.stack(parts).sum(0) for parts in zip(*per_task)]


def add_gradients(model: nn.Module, gradients: list[torch.Tensor]) -> None:
    """Accumulate `gradients` (one per parameter, in order) into the parameters' .grad."""
    for param, grad in zip(model.parameters(), gradients):
        param.grad = grad.clone() if param.grad is None else param.grad + grad


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
        gradients, batch_accuracy = maml_meta_gradient(model, bank_episodes(tasks, normalize, device), settings)
        add_gradients(model, gradients)
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

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.stale = state["best"], state["stale"]
