"""The shared meta-test: adapt on each episode's support, predict its query, keep per-episode
accuracies. The episodes are a task axis (dfmlbench.kernels); tests/oracles.py keeps a plain
one-episode loop (module copy, torch.optim.SGD) that this path is tested against."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from dfmlbench.adaptation import Params, forward, parameters_of, sgd_adapt
from dfmlbench.data.base import ImageDataset
from dfmlbench.episodes import EpisodeSet
from dfmlbench.kernels import PerThread, in_layout, task_map
from dfmlbench.learner import Learner


@dataclass(frozen=True)
class AdaptProtocol:
    """Meta-test adaptation: plain SGD steps at a fixed lr on all parameters (10 at 0.01)."""

    steps: int = 10
    lr: float = 0.01


@dataclass(frozen=True)
class EpisodeBatch:
    support: torch.Tensor  # float (E, way*shot, C, H, W)
    support_labels: torch.Tensor  # int64 (E, way*shot)
    query: torch.Tensor  # float (E, way*query, C, H, W)
    query_labels: torch.Tensor
    first: int  # index of the first episode of the batch in its EpisodeSet


def episode_batches(dataset: ImageDataset, episodes: EpisodeSet, chunk: int,
                    device: torch.device | str) -> Iterator[EpisodeBatch]:
    """Episodes `chunk` at a time, as normalised tensors on `device`."""
    labels = episodes.labels().to(device)
    n_support = episodes.support_size
    for first in range(0, len(episodes), chunk):
        idx = episodes.indices[first:first + chunk]
        images = dataset.normalize(dataset.images[torch.from_numpy(idx.reshape(-1))], device)
        images = images.view(len(idx), idx.shape[1], *images.shape[1:])
        tiled = labels.expand(len(idx), -1)
        yield EpisodeBatch(images[:, :n_support], tiled[:, :n_support],
                           images[:, n_support:], tiled[:, n_support:], first)


def _match_heads(support_logits: torch.Tensor, support_labels: torch.Tensor, way: int) -> np.ndarray:
    """Hungarian assignment of output units to episode classes (maximum summed log-probability)."""
    log_probs = F.log_softmax(support_logits, dim=-1)
    score = torch.zeros(way, log_probs.shape[-1]).index_add_(0, support_labels.cpu(), log_probs.cpu())
    classes, units = linear_sum_assignment(-score.numpy())
    return units[np.argsort(classes)]


def _predict(learner: Learner, support_logits: torch.Tensor | None, support_labels: torch.Tensor,
             query_logits: torch.Tensor, way: int) -> torch.Tensor:
    """Argmax over the output units, remapped to the episode's classes when head matching."""
    if learner.head_matching:
        assert support_logits is not None
        units = torch.as_tensor(_match_heads(support_logits, support_labels, way))
        query_logits = query_logits.cpu()[:, units]
    return query_logits.argmax(dim=-1).cpu()


def _accuracy(prediction: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * int((prediction == labels.cpu()).sum()) / labels.numel()


def evaluate(learner: Learner, dataset: ImageDataset, episodes: EpisodeSet,
             protocol: AdaptProtocol = AdaptProtocol(), device: torch.device | str = "cpu",
             chunk: int = 20, progress: object | None = None) -> np.ndarray:
    """Per-episode query accuracies in % (float64, one per episode). Each episode adapts its own
    copy of the initialisation on its support and predicts its query; `chunk` episodes at a
    time form the task axis (dfmlbench.kernels decides how they run).

    BN normalises with the support batch while adapting and the query batch when predicting,
    the transductive protocol of every official baseline.
    """
    model = copy.deepcopy(learner.model).to(device)
    steps = protocol.steps if learner.adapt_steps is None else learner.adapt_steps
    shared_init = parameters_of(model)
    modules = PerThread(lambda: copy.deepcopy(model))

    def adapt_and_predict(episode: tuple[Params, torch.Tensor, torch.Tensor, torch.Tensor]
                          ) -> tuple[torch.Tensor | None, torch.Tensor]:
        init, support, support_labels, query = episode
        net = modules.get()
        support, query = in_layout(support), in_layout(query)
        with torch.no_grad():  # sgd_adapt takes its gradients; no graph is kept between steps
            adapted = sgd_adapt(net, init, support, support_labels, steps, protocol.lr)
            support_logits = forward(net, adapted, support) if learner.head_matching else None
            return support_logits, forward(net, adapted, query)

    accuracies = np.empty(len(episodes), dtype=np.float64)
    for batch in episode_batches(dataset, episodes, chunk, device):
        count = len(batch.support)
        inits = ([shared_init] * count if learner.init_for_episode is None else  # drawn here, in order
                 [{k: v.to(device) for k, v in learner.init_for_episode(batch.first + i).items()} for i in range(count)])
        logits = task_map(adapt_and_predict, list(zip(inits, batch.support, batch.support_labels, batch.query)),
                          device)
        for i, (support_logits, query_logits) in enumerate(logits):
            prediction = _predict(learner, support_logits, batch.support_labels[i], query_logits, episodes.way)
            accuracies[batch.first + i] = _accuracy(prediction, batch.query_labels[i])
        if progress is not None:
            progress.update(count)
    return accuracies


@dataclass(frozen=True)
class BenchmarkEpisodes:
    """The fixed episodes of one split: one set for a dataset, one per domain for a
    multi-domain benchmark (each domain's images at their own size; D11: the score is over
    all domains' episodes pooled, with each domain's own summary beside it)."""

    parts: tuple[tuple[str, ImageDataset, EpisodeSet], ...]

    def __len__(self) -> int:
        return sum(len(episodes) for _, _, episodes in self.parts)

    def sha(self) -> str:
        if len(self.parts) == 1:
            return self.parts[0][2].sha()
        joined = "+".join(f"{name}:{episodes.sha()}" for name, _, episodes in self.parts)
        return hashlib.sha256(joined.encode()).hexdigest()[:16]

    def evaluate(self, learner: Learner, protocol: AdaptProtocol, device: torch.device | str,
                 chunk: int, progress: object | None = None) -> np.ndarray:
        return np.concatenate([evaluate(learner, dataset, episodes, protocol, device, chunk, progress)
                               for _, dataset, episodes in self.parts])

    def per_domain(self, accuracies: np.ndarray) -> dict[str, np.ndarray]:
        """Each domain's slice of `evaluate`'s result (empty for a single dataset)."""
        if len(self.parts) == 1:
            return {}
        bounds = np.cumsum([0, *(len(episodes) for _, _, episodes in self.parts)])
        return {name: accuracies[a:b] for (name, _, _), a, b in zip(self.parts, bounds, bounds[1:])}
