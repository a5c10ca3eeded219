"""The shared meta-test: adapt on each episode's support, predict its query, keep per-episode
accuracies. Many episodes at once (dfmlbench.stacked, or `vmap`); a plain one-episode loop is
kept as the reference."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.func import vmap

from dfmlbench import stacked
from dfmlbench.adaptation import Params, forward, parameters_of, sgd_adapt
from dfmlbench.data.base import ImageDataset
from dfmlbench.episodes import EpisodeSet
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
             chunk: int = 20, progress: object | None = None, stacked_path: bool | None = None) -> np.ndarray:
    """Per-episode query accuracies in % (float64, one per episode), `chunk` episodes at a time
    in one computation: dfmlbench.stacked for Conv4 meta-learners where it is the device's
    default (`stacked_path=None`; a GPU), `vmap` adaptation otherwise.

    BN normalises with the support batch while adapting and the query batch when predicting,
    the transductive protocol of every official baseline.
    """
    model = copy.deepcopy(learner.model).to(device)
    steps = protocol.steps if learner.adapt_steps is None else learner.adapt_steps
    shared_init = parameters_of(model)

    accuracies = np.empty(len(episodes), dtype=np.float64)
    for batch in episode_batches(dataset, episodes, chunk, device):
        count = len(batch.support)
        if learner.init_for_episode is None:
            params, params_dim = shared_init, None
        else:
            inits = [learner.init_for_episode(batch.first + i) for i in range(count)]
            params = {k: torch.stack([p[k] for p in inits]).to(device) for k in shared_init}
            params_dim = 0
        use_stacked = stacked.batch_by_default(device) if stacked_path is None else stacked_path
        if use_stacked and stacked.stackable(model):
            support_logits, query_logits = _adapt_and_predict_stacked(
                model, params if params_dim == 0 else stacked.stack(params, count), batch, steps, protocol.lr,
                learner.head_matching)
        else:
            support_logits, query_logits = _adapt_and_predict_vmap(
                model, params, params_dim, batch, steps, protocol.lr, learner.head_matching)
        for i in range(count):
            prediction = _predict(learner, support_logits[i] if support_logits is not None else None,
                                  batch.support_labels[i], query_logits[i], episodes.way)
            accuracies[batch.first + i] = _accuracy(prediction, batch.query_labels[i])
        if progress is not None:
            progress.update(count)
    return accuracies


def _adapt_and_predict_stacked(model: nn.Module, params: stacked.Stacked, batch: EpisodeBatch, steps: int,
                               lr: float, support_too: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """All episodes of the batch adapted and predicted together (Conv4 meta-learners); the
    support logits only when asked (head matching)."""
    adapted = stacked.sgd(model, params, batch.support, batch.support_labels, steps, lr)  # type: ignore[arg-type]
    with torch.no_grad():
        support = stacked.forward(model, adapted, batch.support) if support_too else None  # type: ignore[arg-type]
        return support, stacked.forward(model, adapted, batch.query)  # type: ignore[arg-type]


def _adapt_and_predict_vmap(model: nn.Module, params: Params, params_dim: int | None, batch: EpisodeBatch,
                            steps: int, lr: float, support_too: bool
                            ) -> tuple[list[torch.Tensor] | None, list[torch.Tensor]]:
    """Any architecture: adaptation under `vmap`, prediction episode by episode (a plain batch
    of queries runs dense kernels where vmap would need grouped convolutions)."""
    def adapt(own: Params, xs: torch.Tensor, ys: torch.Tensor) -> Params:
        return sgd_adapt(model, own, xs, ys, steps, lr)

    with torch.no_grad():  # torch.func.grad inside still differentiates; no graph is kept
        adapted = vmap(adapt, in_dims=(params_dim, 0, 0))(params, batch.support, batch.support_labels)
        support_logits, query_logits = [], []
        for i in range(len(batch.support)):
            own = {name: p[i] for name, p in adapted.items()}
            if support_too:
                support_logits.append(forward(model, own, batch.support[i]))
            query_logits.append(forward(model, own, batch.query[i]))
    return (support_logits if support_too else None), query_logits


def evaluate_reference(learner: Learner, dataset: ImageDataset, episodes: EpisodeSet,
                       protocol: AdaptProtocol = AdaptProtocol(),
                       device: torch.device | str = "cpu") -> np.ndarray:
    """The plain path: one episode at a time, a module copy, torch.optim.SGD and backward().

    Independent of `torch.func`, it is the ground truth the batched path is tested against.
    """
    steps = protocol.steps if learner.adapt_steps is None else learner.adapt_steps
    accuracies = np.empty(len(episodes), dtype=np.float64)
    for batch in episode_batches(dataset, episodes, 1, device):
        model = copy.deepcopy(learner.model).to(device).train()
        if learner.init_for_episode is not None:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(learner.init_for_episode(batch.first)[name])
        optimizer = torch.optim.SGD(model.parameters(), lr=protocol.lr)
        xs, ys, xq = batch.support[0], batch.support_labels[0], batch.query[0]
        for _ in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(model(xs), ys).backward()
            optimizer.step()
        with torch.no_grad():
            prediction = _predict(learner, model(xs), ys, model(xq), episodes.way)
        accuracies[batch.first] = _accuracy(prediction, batch.query_labels[0])
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
