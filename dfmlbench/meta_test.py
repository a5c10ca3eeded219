"""The shared meta-test of one cell: its fixed meta-val and meta-test episodes, how a learner
adapts on them (the fixed lr, or the grid lr best on meta-val), and the record fields that say
how it did. `run` and `evaluate` (saved learners, another protocol) both test through it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from dfmlbench.data.base import ImageDataset
from dfmlbench.data.multidomain import MultiDomainDataset
from dfmlbench.episodes import make_episodes
from dfmlbench.evaluation import AdaptProtocol, BenchmarkEpisodes
from dfmlbench.learner import Learner
from dfmlbench.method import TEST_CURVE
from dfmlbench.stats import summarize


def benchmark_episodes(dataset: ImageDataset | MultiDomainDataset, split: str, protocol: dict[str, Any], shot: int,
                       count: int) -> BenchmarkEpisodes:
    """`count` fixed episodes of the split (of each domain, for a multi-domain benchmark)."""
    parts = ([(d.name, d.dataset) for d in dataset.domains] if isinstance(dataset, MultiDomainDataset)
             else [(dataset.name, dataset)])
    return BenchmarkEpisodes(tuple(
        (name, data, make_episodes(data, split, protocol["way"], shot, protocol["query"], count,
                                   protocol["episode_seed"])) for name, data in parts))


MAX_OVER_TEST_LABEL = ("official-style: the maximum over the periodic test evaluations during training "
                       "(optimistically biased, selects nothing; the result is the meta-val-selected learner)")


def max_over_test(curves: dict[str, list[tuple[int, float]]]) -> dict[str, dict[str, Any]]:
    """The official codes' reported number, from a fit's `test_accuracy` curve ({} without one)."""
    points = curves.get(TEST_CURVE)
    if not points:
        return {}
    step, best = max(points, key=lambda point: point[1])
    return {"max_over_test": {"mean": best, "step": step, "evaluations": len(points), "label": MAX_OVER_TEST_LABEL}}


@dataclass
class TestOutcome:
    accuracies: np.ndarray  # per test episode, the learner's
    fields: dict[str, Any]  # the record's result fields
    seconds: float


class MetaTest:
    def __init__(self, dataset: ImageDataset | MultiDomainDataset, protocol: dict[str, Any], shot: int,
                 device: torch.device, chunk: int) -> None:
        self.protocol, self.device, self.chunk = protocol, device, chunk
        self.adapt = AdaptProtocol(protocol["steps"], protocol["lr"])
        self.test_episodes = benchmark_episodes(dataset, "test", protocol, shot, protocol["test_episodes"])
        self.val_episodes = benchmark_episodes(dataset, "val", protocol, shot, protocol["val_episodes"])

    def validate(self, learner: Learner) -> float:
        """Mean meta-val accuracy under the fixed protocol (a method's model selection)."""
        return self._mean(self.val_episodes, learner)

    def test_mean(self, learner: Learner) -> float:
        """Mean meta-test accuracy under the fixed protocol: the official codes' periodic test
        evaluation (protocol.max_over_test), a diagnostic that selects nothing."""
        return self._mean(self.test_episodes, learner)

    def _mean(self, episodes: BenchmarkEpisodes, learner: Learner) -> float:
        return float(episodes.evaluate(learner, self.adapt, self.device, self.chunk).mean())

    def protocol_for(self, learner: Learner) -> tuple[AdaptProtocol, dict[str, float] | None]:
        """The fixed protocol, or the grid lr that is best on the meta-val episodes."""
        grid = self.protocol.get("lr_grid")  # typed when the suite was resolved
        if grid is None:
            return self.adapt, None
        by_lr = {str(lr): float(self.val_episodes.evaluate(learner, AdaptProtocol(self.adapt.steps, lr),
                                                           self.device, self.chunk).mean()) for lr in grid}
        return AdaptProtocol(self.adapt.steps, float(max(by_lr, key=by_lr.get))), by_lr

    def run(self, learner: Learner, extras: dict[str, Learner], bar: Callable[..., Any],
            on_stage: Callable[..., None], curves: dict[str, list[tuple[int, float]]] | None = None) -> TestOutcome:
        """The learner (and each diagnostic extra) on the test episodes; with the fit's `curves`,
        the maximum of its periodic test evaluations too (protocol.max_over_test)."""
        curves = curves or {}
        started = time.perf_counter()
        chosen, val_by_lr = self.protocol_for(learner)
        on_stage("meta-test", episodes=len(self.test_episodes), lr=chosen.lr)
        with bar(total=len(self.test_episodes), desc="meta-test") as progress:
            accuracies = self.test_episodes.evaluate(learner, chosen, self.device, self.chunk, progress)
        extra = {}
        for name, other in extras.items():
            other_protocol, other_by_lr = self.protocol_for(other)
            extra[name] = summarize(self.test_episodes.evaluate(other, other_protocol, self.device,
                                                                self.chunk)).as_dict()
            if other_by_lr is not None:
                extra[name]["meta_test_lr"] = {"chosen": other_protocol.lr, "val_accuracy_by_lr": other_by_lr}
        fields = {
            "accuracy": summarize(accuracies).as_dict(), "extra_evaluations": {**extra, **max_over_test(curves)},
            "per_domain": {name: summarize(part).as_dict()
                           for name, part in self.test_episodes.per_domain(accuracies).items()},
            "meta_test_lr": {"chosen": chosen.lr, "selected_on": "meta-val" if val_by_lr else "fixed",
                             "val_accuracy_by_lr": val_by_lr},
            "test_episodes": {"count": len(self.test_episodes), "sha": self.test_episodes.sha(),
                              "episode_seed": self.protocol["episode_seed"]},
        }
        return TestOutcome(accuracies, fields, time.perf_counter() - started)
