"""Stacked per-task Conv4s (dfmlbench.stacked) against one module per task: the batched
meta-test and replay paths must give the reference paths' numbers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dfmlbench import maml as maml_module
from dfmlbench import stacked
from dfmlbench.adaptation import forward, parameters_of, sgd_adapt
from dfmlbench.inversion.bank import BankTask, MemoryBank
from dfmlbench.maml import ReplaySettings, maml_task_loss, maml_tasks_loss, replay
from dfmlbench.models import build_model
from numerics import (FLOAT64_PATHS, Float64Images, assert_accuracies_match, assert_same_meta_test,
                      assert_stable_predictions_equal)

TASKS, WAY, SHOT, QUERY = 3, 5, 2, 3


def learner(seed: int = 0, size: int = 32):
    return build_model("conv4", image_size=size, batch_stat_bn=True, generator=torch.Generator().manual_seed(seed))


def own_params(tasks: int = TASKS, size: int = 32) -> dict[str, torch.Tensor]:
    """Different parameters for each task."""
    per_task = [parameters_of(learner(seed, size)) for seed in range(tasks)]
    return {name: torch.stack([p[name] for p in per_task]) for name in per_task[0]}


def images(tasks: int, count: int, size: int = 32) -> torch.Tensor:
    return torch.randn(tasks, count, 3, size, size, generator=torch.Generator().manual_seed(count))


def labels(tasks: int, per_class: int) -> torch.Tensor:
    return torch.arange(WAY).repeat(per_class).expand(tasks, -1)


@pytest.mark.parametrize("size", [32, 84])
def test_forward_equals_each_task_through_its_own_module(size):
    model, params, x = learner(size=size), own_params(size=size), images(TASKS, 7, size)
    logits = stacked.forward(model, params, x)
    for t in range(TASKS):
        expected = forward(model, {name: p[t] for name, p in params.items()}, x[t])
        torch.testing.assert_close(logits[t], expected, rtol=1e-4, atol=1e-5)


def test_sgd_equals_each_task_adapted_alone():
    model, params = learner(), own_params()
    x, y = images(TASKS, WAY * SHOT), labels(TASKS, SHOT)
    adapted = stacked.sgd(model, params, x, y, steps=5, lr=0.05)
    assert all(not p.requires_grad for p in adapted.values())
    for t in range(TASKS):
        alone = sgd_adapt(model, {name: p[t] for name, p in params.items()}, x[t], y[t], 5, 0.05)
        for name in alone:
            torch.testing.assert_close(adapted[name][t], alone[name], rtol=1e-4, atol=1e-5)


def test_stackable_only_for_batch_statistics_conv4():
    assert stacked.stackable(learner())
    assert not stacked.stackable(build_model("conv4"))  # a teacher: running statistics
    assert not stacked.stackable(build_model("resnet10", batch_stat_bn=True))


def bank_tasks(count: int) -> list[BankTask]:
    g = torch.Generator().manual_seed(1)
    lab = torch.arange(WAY)
    return [BankTask(torch.rand(WAY * SHOT, 3, 32, 32, generator=g), lab.repeat_interleave(SHOT),
                     torch.rand(WAY * QUERY, 3, 32, 32, generator=g), lab.repeat_interleave(QUERY), list(range(WAY)))
            for _ in range(count)]


def recording(monkeypatch, module, name: str) -> list[torch.Tensor]:
    """Every output of `module.name` from now on (the function itself still runs)."""
    original, outputs = getattr(module, name), []

    def spy(*args, **kwargs):
        outputs.append(original(*args, **kwargs))
        return outputs[-1]

    monkeypatch.setattr(module, name, spy)
    return outputs


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_of_stacked_tasks_is_the_sum_of_each_tasks(first_order, monkeypatch):
    settings = ReplaySettings(WAY, SHOT, QUERY, inner_steps=3, inner_lr=0.05, first_order=first_order)
    tasks, normalize = bank_tasks(TASKS), (lambda x: (x - 0.5) / 0.25)
    model = learner()
    stacked_logits = recording(monkeypatch, stacked, "forward")
    loss, accuracies = maml_tasks_loss(model, tasks, normalize, settings, torch.device("cpu"))
    assert len(stacked_logits) == settings.inner_steps + 1  # the inner steps' supports, then the queries
    batched = torch.autograd.grad(loss, list(model.parameters()))
    reference_loss, reference_acc = 0.0, []
    loop_logits = recording(monkeypatch, maml_module, "forward")  # each task's query (sgd_adapt has its own)
    for task in tasks:
        task_loss, accuracy = maml_task_loss(model, task, normalize, settings, torch.device("cpu"))
        reference_loss = reference_loss + task_loss
        reference_acc.append(accuracy)
    reference = torch.autograd.grad(reference_loss, list(model.parameters()))
    torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=1e-6)
    # float32 query logits after 3 SGD steps differ by ~3e-6 here: 1e-4 leaves 40x for other
    # CPUs; a wrong support, lr or step count moves them by 1e-2 and more. Accuracies: equal
    # up to the queries whose top-two margin that tolerance could close.
    stable = assert_stable_predictions_equal(stacked_logits[-1].detach(), torch.stack(loop_logits).detach(),
                                             rtol=1e-4, atol=1e-4)
    assert_accuracies_match(accuracies, reference_acc, stable)
    for a, b in zip(batched, reference):
        # conv biases feed batch-statistics BN: their true gradient is 0, both paths give noise
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    assert any(float(g.abs().max()) > 0 for g in batched)


def test_replay_meta_step_batched_equals_the_task_loop(monkeypatch):
    bank = MemoryBank()
    g = torch.Generator().manual_seed(2)
    for c in range(6):
        bank.add(c, torch.rand(8, 3, 32, 32, generator=g))
    results = []
    for batched in (True, False):
        # float64: in float32 second-order steps amplify rounding to ~1e-3 relative after two
        # meta-steps (both paths alike); in float64 the two paths agree to ~1e-15.
        model = learner().double()
        # SGD: Adam would blow the float noise of the conv biases' zero gradients up to full steps
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        settings = ReplaySettings(WAY, 1, 3, inner_steps=2, episode_batch=4, max_metabatches=2, batched=batched)
        logits = recording(monkeypatch, stacked if batched else maml_module, "forward")
        stats = replay(model, optimizer, bank, lambda x: x.double() - 0.5, settings, np.random.default_rng(0),
                       torch.device("cpu"))
        # every task's query logits (query, classes), meta-batch by meta-batch, task by task
        queries = torch.cat([out.detach().reshape(-1, WAY) for out in logits if out.shape[-2] == WAY * settings.query])
        results.append((stats, parameters_of(model), queries))
    (a_stats, a, a_logits), (b_stats, b, b_logits) = results
    assert a_stats.metabatches == b_stats.metabatches == 2
    assert len(a_logits) == len(b_logits) == 2 * 4 * WAY * 3
    # mean accuracy: over equally many queries per task, so it may differ by the unstable ones only
    stable = assert_stable_predictions_equal(a_logits, b_logits, **FLOAT64_PATHS)
    assert_accuracies_match([a_stats.mean_accuracy], [b_stats.mean_accuracy], stable.reshape(1, -1))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-10, atol=1e-12)


def test_meta_test_of_a_resnet_learner_still_matches_the_reference(glyphs, monkeypatch):
    from dfmlbench.episodes import make_episodes
    from dfmlbench.evaluation import AdaptProtocol, evaluate, evaluate_reference
    from dfmlbench.learner import Learner
    episodes, data = make_episodes(glyphs, "test", 5, 1, 2, 2, seed=0), Float64Images(glyphs)
    model = build_model("resnet10", batch_stat_bn=True, generator=torch.Generator().manual_seed(0)).double()
    protocol = AdaptProtocol(2, 0.01)
    assert_same_meta_test(monkeypatch, lambda: evaluate(Learner(model), data, episodes, protocol, chunk=2),
                          lambda: evaluate_reference(Learner(copy.deepcopy(model)), data, episodes, protocol))


def test_any_size_conv4_takes_32_and_84_px_and_stacks():
    model = build_model("conv4-any", batch_stat_bn=True, generator=torch.Generator().manual_seed(0))
    assert model.classifier.in_features == 32
    for size in (32, 84):
        x = images(2, 5, size)
        logits = stacked.forward(model, stacked.stack(parameters_of(model), 2), x)
        assert logits.shape == (2, 5, 5)
        torch.testing.assert_close(logits[1], forward(model, parameters_of(model), x[1]), rtol=1e-4, atol=1e-5)


def test_meta_test_stacked_path_equals_the_reference(glyphs, monkeypatch):
    from dfmlbench.episodes import make_episodes
    from dfmlbench.evaluation import evaluate, evaluate_reference
    from dfmlbench.learner import Learner
    episodes, data = make_episodes(glyphs, "test", 5, 1, 15, 8, seed=3), Float64Images(glyphs)
    meta_learner = Learner(learner().double())
    assert_same_meta_test(monkeypatch, lambda: evaluate(meta_learner, data, episodes, chunk=4, stacked_path=True),
                          lambda: evaluate_reference(meta_learner, data, episodes))


def test_stacked_paths_are_the_default_on_gpus_only():
    assert stacked.batch_by_default("cuda") and stacked.batch_by_default(torch.device("cuda:0"))
    assert not stacked.batch_by_default("cpu")
