"""The shared meta-test: adapt on each episode's support, predict its query, keep per-episode
accuracies. The episodes are a task axis (dfmlbench.kernels); tests/oracles.py keeps a plain
one-episode loop (module copy, torch.optim.SGD) that this path is tested against."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from dfmlbench.adaptation import Params, forward, parameters_of, sgd_adapt
from dfmlbench.data.base import ImageDataset
from dfmlbench.episodes import EpisodeSet
from dfmlbench.kernels import PerThread, in_layout, in_layout_params, task_map
from dfmlbench.learner import Learner


@dataclass(frozen=True)
class AdaptProtocol:
    """Meta-test adaptation: plain SGD steps at a fixed lr on all parameters (10 at 0.01)."""

    steps: int = 10
    lr: float = 0.01


@dataclass(frozen=True)
class Episode:
    support: torch.Tensor  # float (way*shot, C, H, W), normalised, in the device's layout
    support_labels: torch.Tensor  # int64 (way*shot,)
    query: torch.Tensor  # float (way*query, C, H, W)
    query_labels: torch.Tensor


def episode_tensors(dataset: ImageDataset, episodes: EpisodeSet, index: int, device: torch.device | str) -> Episode:
    """Episode `index` as normalised tensors on `device`, in its preferred layout."""
    images = dataset.normalize(dataset.images[torch.from_numpy(episodes.indices[index])], device)
    images, labels, n_support = in_layout(images), episodes.labels().to(device), episodes.support_size
    return Episode(images[:n_support], labels[:n_support], images[n_support:], labels[n_support:])


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
    shared_init = in_layout_params(parameters_of(model))
    modules = PerThread(lambda: copy.deepcopy(model))

    def adapt_and_predict(task: tuple[int, Params]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """One episode on its worker: its images, adaptation, then (support logits if head
        matching, query logits)."""
        index, init = task
        episode, net = episode_tensors(dataset, episodes, index, device), modules.get()
        with torch.no_grad():  # sgd_adapt takes its gradients; no graph is kept between steps
            adapted = sgd_adapt(net, init, episode.support, episode.support_labels, steps, protocol.lr)
            support_logits = forward(net, adapted, episode.support) if learner.head_matching else None
            return support_logits, forward(net, adapted, episode.query)

    labels, n_support = episodes.labels(), episodes.support_size
    accuracies = np.empty(len(episodes), dtype=np.float64)
    for first in range(0, len(episodes), chunk):
        indices = range(first, min(first + chunk, len(episodes)))
        inits = ([shared_init] * len(indices) if learner.init_for_episode is None else  # drawn here, in order
                 [in_layout_params({k: v.to(device) for k, v in learner.init_for_episode(i).items()})
                  for i in indices])
        logits = task_map(adapt_and_predict, list(zip(indices, inits)), device)
        for index, (support_logits, query_logits) in zip(indices, logits):
            prediction = _predict(learner, support_logits, labels[:n_support], query_logits, episodes.way)
            accuracies[index] = _accuracy(prediction, labels[n_support:])
        if progress is not None:
            progress.update(len(indices))
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
