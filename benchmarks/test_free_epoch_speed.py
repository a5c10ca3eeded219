"""One FREE epoch (5-way 1-shot, 32 px, cpu-profile sizes): batched (stacked recoveries and
replay meta-batches) against the one-at-a-time reference paths, with the recovery (FIVE) part
reported separately. Both runs start from the same state in one process.

Run: python -m pytest benchmarks -k free --benchmark-columns=mean,stddev,rounds
"""

from __future__ import annotations

import pytest

from speed import DEVICE, best_seconds, check_ratio, target
from dfmlbench.maml import replay
from dfmlbench.method import RunContext
from dfmlbench.methods import create_method
from dfmlbench.methods.free import FreeTraining
from dfmlbench.pool import PoolSpec, obtain_pool

# The cpu profile's sizes: b=4 teachers, k=5, 10 images per class, ngf 32, replay of
# meta-batches of 10 tasks capped at 2 per epoch.
SETTINGS = {"epochs": 1, "warmup_epochs": 0, "images_per_class": 10, "ngf": 32,
            "replay_max_metabatches": 2}


def make_training(pool, batched: bool, folder) -> FreeTraining:
    method = create_method("free", SETTINGS)
    ctx = RunContext(DEVICE, 0, method.settings, "conv4", 32, 3, 5, 1, folder,
                     validator=lambda learner: 0.0)
    return FreeTraining(method.settings, pool, ctx, batched=batched)


def one_epoch(training: FreeTraining, teachers) -> None:
    tasks = training.recover(teachers, warmup=False)
    training.store(teachers, tasks)
    training.learn_from_tasks(teachers, tasks, 1)
    replay(training.model, training.optimizer, training.bank, training.augment.normalize,
           training.replay_settings, training.rng, training.device)


@pytest.fixture(scope="module")
def pool(glyphs):
    return obtain_pool(glyphs, PoolSpec(num_teachers=4, epochs=2), DEVICE)


def test_free_epoch(benchmark, pool, tmp_path):
    teachers = [pool[i] for i in range(4)]
    seconds, recovery = {}, {}
    for batched in (False, True):
        training = make_training(pool, batched, tmp_path / str(batched))
        training.store(teachers, training.recover(teachers, warmup=False))  # a bank to replay from
        clock = training.ctx.recovery_clock
        before, rounds = clock.seconds, 3
        seconds[batched] = best_seconds(lambda: one_epoch(training, teachers), rounds)
        recovery[batched] = (clock.seconds - before) / rounds
    benchmark.pedantic(one_epoch, args=(training, teachers), rounds=1, iterations=1)
    benchmark.extra_info.update(recovery_seconds_reference=recovery[False],
                                recovery_seconds_batched=recovery[True])
    print(f"\nrecovery per epoch: reference {recovery[False]:.2f} s, batched {recovery[True]:.2f} s "
          f"(x{recovery[False] / recovery[True]:.2f})")
    check_ratio("FREE epoch", seconds[False], seconds[True], target("FREE epoch"), benchmark.extra_info)
