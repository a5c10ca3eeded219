"""Meta-test speed: the library's `evaluate` against the frozen pre-kernel baseline
(baseline_paths.meta_test), 5-way 1-shot and 5-shot, 32 px, the same episodes, one process.
The baseline is what the CPU ran by default: `vmap` at 1-shot; at 5-shot the faster of `vmap`
and the one-episode loop. Both give the same accuracies up to queries whose logits are closer
than the two paths' float32 rounding (the share of identical episodes is reported).

Run: python -m pytest benchmarks -k meta_test -s
The 600-episode meta-test scales linearly in episodes; BENCH_EPISODES of them are timed, each
path the best of two rounds (the first pays one-time costs: vmap's first call takes about twice
as long as its second).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import baseline_paths
from speed import DEVICE, best_seconds, check_ratio, target
from dfmlbench.episodes import make_episodes
from dfmlbench.evaluation import evaluate
from dfmlbench.learner import Learner
from dfmlbench.models import build_model

EPISODES = int(os.environ.get("BENCH_EPISODES", "40"))


@pytest.fixture(scope="module")
def learner():
    model = build_model("conv4", batch_stat_bn=True, zero_head_bias=True,
                        generator=torch.Generator().manual_seed(0))
    return Learner(model)


@pytest.mark.parametrize("shot", [1, 5])
def test_meta_test_against_the_baseline(benchmark, glyphs, learner, shot):
    episodes = make_episodes(glyphs, "test", 5, shot, 15, EPISODES, seed=0)
    library = best_seconds(lambda: evaluate(learner, glyphs, episodes, device=DEVICE, chunk=20), rounds=2)
    paths = {"vmap": False, "loop": True} if shot > 1 else {"vmap": False}
    frozen = baseline_paths.frozen_model(learner.model)
    baselines = {name: best_seconds(lambda: baseline_paths.meta_test(frozen, glyphs, episodes, loop=loop,
                                                                             device=DEVICE),
                                    rounds=2) for name, loop in paths.items()}
    fastest = min(baselines, key=baselines.get)
    ours = evaluate(learner, glyphs, episodes, device=DEVICE, chunk=20)
    theirs = baseline_paths.meta_test(frozen, glyphs, episodes, loop=paths[fastest], device=DEVICE)
    agree = float(np.mean(np.isclose(ours, theirs)))
    # float32: near-tied queries may flip between kernels (tests/ compare the paths in float64);
    # on average less than one query per episode may differ
    one_query = 100.0 / (episodes.way * 15)
    assert abs(ours.mean() - theirs.mean()) < one_query, f"mean accuracy {ours.mean():.2f} vs {theirs.mean():.2f}"
    benchmark.pedantic(evaluate, args=(learner, glyphs, episodes), kwargs={"chunk": 20, "device": DEVICE},
                       rounds=1, iterations=1)
    benchmark.extra_info.update(episodes=EPISODES, shot=shot, baseline=fastest, episodes_identical=float(agree),
                                **{f"baseline_{name}_seconds": s for name, s in baselines.items()})
    name = f"meta-test {shot}-shot"
    print(f"\n{name}, {EPISODES} episodes: baseline = {fastest} ({', '.join(f'{k} {v:.2f} s' for k, v in baselines.items())})")
    check_ratio(name, baselines[fastest], library, target(name), benchmark.extra_info)
