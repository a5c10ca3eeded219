"""One FREE epoch (5-way 1-shot, 32 px): total time and its recovery (FIVE) part.

Run: python -m pytest benchmarks -k free --benchmark-columns=mean,stddev,rounds
Sizes are the quickstart cpu profile's (50 images per teacher, ngf 32, replay capped at 2
meta-batches), so the numbers say what one epoch of `--suite quickstart` costs.
"""

from __future__ import annotations

import torch

from dfmlbench.method import RunContext
from dfmlbench.methods import create_method
from dfmlbench.methods.free import FreeTraining
from dfmlbench.pool import PoolSpec, obtain_pool

SETTINGS = {"epochs": 1, "warmup_epochs": 0, "images_per_class": 10, "ngf": 32,
            "replay_max_metabatches": 2}


def test_free_epoch(benchmark, glyphs, tmp_path):
    pool = obtain_pool(glyphs, PoolSpec(num_teachers=4, epochs=2))
    method = create_method("free", SETTINGS)
    ctx = RunContext(torch.device("cpu"), 0, method.settings, "conv4", 32, 3, 5, 1, tmp_path,
                     validator=lambda learner: 0.0)
    training = FreeTraining(method.settings, pool, ctx)
    teachers = [pool[i] for i in range(4)]
    training.store(teachers, training.recover(teachers, warmup=False))  # a bank to replay from

    def epoch() -> None:
        tasks = training.recover(teachers, warmup=False)
        training.store(teachers, tasks)
        training.learn_from_tasks(teachers, tasks, 1)
        from dfmlbench.maml import replay
        replay(training.model, training.optimizer, training.bank, training.augment.normalize,
               training.replay_settings, training.rng, training.device)

    before = ctx.recovery_clock.seconds, ctx.recovery_clock.intervals
    benchmark.pedantic(epoch, rounds=3, iterations=1, warmup_rounds=0)
    rounds = (ctx.recovery_clock.intervals - before[1]) / len(teachers)
    recovery = (ctx.recovery_clock.seconds - before[0]) / rounds
    benchmark.extra_info.update(recovery_seconds_per_epoch=recovery,
                                recovery_fraction=recovery / benchmark.stats.stats.mean)
    print(f"\nFREE epoch: {benchmark.stats.stats.mean:.2f} s, of which recovery {recovery:.2f} s")
