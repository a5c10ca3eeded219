"""Meta-test speed: the stacked evaluation (every episode's Conv4 in one computation) against
the one-episode reference loop, 5-way 1-shot and 5-shot, 32 px, same episodes, one process.

Run: python -m pytest benchmarks -k meta_test --benchmark-columns=mean,stddev,rounds
The 600-episode meta-test scales linearly in episodes; BENCH_EPISODES of them are timed.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from speed import DEVICE, best_seconds, check_ratio, target
from dfmlbench.episodes import make_episodes
from dfmlbench.evaluation import evaluate, evaluate_reference
from dfmlbench.learner import Learner
from dfmlbench.models import build_model

EPISODES = int(os.environ.get("BENCH_EPISODES", "40"))


@pytest.fixture(scope="module")
def learner():
    model = build_model("conv4", batch_stat_bn=True, zero_head_bias=True,
                        generator=torch.Generator().manual_seed(0))
    return Learner(model)


@pytest.mark.parametrize("shot", [1, 5])
def test_batched_meta_test(benchmark, glyphs, learner, shot):
    episodes = make_episodes(glyphs, "test", 5, shot, 15, EPISODES, seed=0)
    reference = best_seconds(lambda: evaluate_reference(learner, glyphs, episodes, device=DEVICE), rounds=1)
    batched = best_seconds(lambda: evaluate(learner, glyphs, episodes, device=DEVICE, chunk=20,
                                            stacked_path=True), rounds=2)
    agree = np.mean(evaluate(learner, glyphs, episodes, device=DEVICE, chunk=20, stacked_path=True)
                    == evaluate_reference(learner, glyphs, episodes, device=DEVICE))
    benchmark.pedantic(evaluate, args=(learner, glyphs, episodes),
                       kwargs={"chunk": 20, "device": DEVICE, "stacked_path": True}, rounds=1, iterations=1)
    benchmark.extra_info.update(episodes=EPISODES, shot=shot, episodes_identical=float(agree))
    name = f"meta-test {shot}-shot"
    check_ratio(name, reference, batched, target(name), benchmark.extra_info)
