"""Meta-test speed: the batched (vmap) evaluation against the one-episode reference loop.

Run: python -m pytest benchmarks --benchmark-columns=mean,stddev,rounds
The ratio reference/batched is printed and stored in the benchmark's extra_info.
"""

from __future__ import annotations

import time

import pytest
import torch

from dfmlbench.episodes import make_episodes
from dfmlbench.evaluation import evaluate, evaluate_reference
from dfmlbench.learner import Learner
from dfmlbench.models import build_model

EPISODES = 40


@pytest.fixture(scope="module")
def setting(glyphs):
    episodes = make_episodes(glyphs, "test", 5, 1, 15, EPISODES, seed=0)
    model = build_model("conv4", batch_stat_bn=True, zero_head_bias=True,
                        generator=torch.Generator().manual_seed(0))
    return glyphs, episodes, Learner(model)


def test_batched_meta_test(benchmark, setting):
    dataset, episodes, learner = setting
    started = time.perf_counter()
    evaluate_reference(learner, dataset, episodes)
    reference_seconds = time.perf_counter() - started
    benchmark.pedantic(evaluate, args=(learner, dataset, episodes), kwargs={"chunk": 20},
                       rounds=3, iterations=1, warmup_rounds=1)
    ratio = reference_seconds / benchmark.stats.stats.mean
    benchmark.extra_info.update(episodes=EPISODES, reference_seconds=reference_seconds,
                                speedup_vs_reference=ratio)
    print(f"\n{EPISODES} episodes 5-way 1-shot: reference {reference_seconds:.2f} s, "
          f"batched {benchmark.stats.stats.mean:.2f} s, speed-up x{ratio:.2f}")
