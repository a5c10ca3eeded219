"""The task axis (dfmlbench.kernels): each algorithm is written once as a function of one task;
on either kernel ("threads": a CPU's worker pool, "loop": CUDA's, or one thread) it equals the
one-at-a-time oracles in tests/oracles.py. Compared in float64 where Adam or second-order
steps amplify float32 rounding (the kernels differ in intra-op thread count, so they round
differently)."""

from __future__ import annotations

import copy
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from dfmlbench import kernels
from dfmlbench.errors import UserError
from dfmlbench.episodes import make_episodes
from dfmlbench.evaluation import AdaptProtocol, evaluate
from dfmlbench.inversion.augment import GeneratedImageAugment
from dfmlbench.inversion.generator import Generator
from dfmlbench.inversion.recovery import RecoverySettings, interleaved_targets, recover_tasks
from dfmlbench.learner import Learner
from dfmlbench.maml import ReplaySettings, maml_meta_gradient
from dfmlbench.method import RunContext
from dfmlbench.methods import create_method
from dfmlbench.methods.bidf_mkd import BiDfTraining
from dfmlbench.methods.purer import PurerTraining
from dfmlbench.models import build_model
from numerics import Float64Images, assert_same_meta_test
from oracles import (bidf_event_reference, evaluate_reference, maml_gradient_reference, purer_pixel_gradient_reference,
                     recover_tasks_reference)


@pytest.fixture(params=kernels.KERNELS)
def kernel(request, monkeypatch):
    monkeypatch.setenv("DFMLBENCH_TASK_KERNEL", request.param)
    return request.param


def learner_model(seed=0, arch="conv4"):
    return build_model(arch, batch_stat_bn=True, generator=torch.Generator().manual_seed(seed))


def generators(count, seed=0):
    return kernels.task_generators(torch.Generator().manual_seed(seed), count)


# -- the kernel layer -----------------------------------------------------------------------------

def test_one_decision_per_device(monkeypatch):
    monkeypatch.delenv("DFMLBENCH_TASK_KERNEL", raising=False)
    assert kernels.kernel_for("cuda") == "loop"
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert kernels.kernel_for("cpu") == "loop"
        torch.set_num_threads(2)
        assert kernels.kernel_for("cpu") == "threads"
    finally:
        torch.set_num_threads(previous)
    monkeypatch.setenv("DFMLBENCH_TASK_KERNEL", "loop")
    assert kernels.kernel_for("cpu") == "loop"
    monkeypatch.setenv("DFMLBENCH_TASK_KERNEL", "grouped")
    with pytest.raises(UserError, match="choose one of threads, loop"):
        kernels.kernel_for("cpu")


def test_task_map_keeps_order_grad_mode_and_one_thread_per_task(kernel):
    main_threads = torch.get_num_threads()

    def task(i):
        return i, torch.is_grad_enabled(), torch.get_num_threads(), threading.get_ident()

    with torch.no_grad():
        results = kernels.task_map(task, range(6), "cpu")
    assert [i for i, *_ in results] == list(range(6))
    assert not any(grad for _, grad, _, _ in results)
    if kernel == "threads":
        assert all(threads == 1 for *_, threads, _ in results)
        assert all(ident != threading.get_ident() for *_, ident in results)
    assert torch.get_num_threads() == main_threads  # the workers' setting stays theirs


def test_a_task_map_inside_a_task_runs_in_place(kernel):
    outer = threading.get_ident

    def task(i):
        return kernels.task_map(lambda j: (i, j, outer()), range(2), "cpu")

    for inner in kernels.task_map(task, range(3), "cpu"):
        assert len({ident for *_, ident in inner}) == 1  # no worker waits for another


def test_task_generators_are_reproducible_and_distinct():
    a = [int(torch.randint(0, 2**30, (1,), generator=g)) for g in generators(3)]
    assert a == [int(torch.randint(0, 2**30, (1,), generator=g)) for g in generators(3)]
    assert len(set(a)) == 3


def test_layout_is_channels_last_on_cpu_only():
    x = kernels.in_layout(torch.randn(2, 3, 8, 8))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert kernels.preferred_layout("cuda") == torch.contiguous_format
    assert kernels.in_layout(torch.randn(2, 3)).shape == (2, 3)


# -- the algorithms against their oracles ---------------------------------------------------------

def test_meta_test_equals_the_one_episode_oracle(glyphs, monkeypatch, kernel):
    episodes, data = make_episodes(glyphs, "test", 5, 1, 5, 6, seed=2), Float64Images(glyphs)
    learner = Learner(learner_model().double())
    assert_same_meta_test(monkeypatch, lambda: evaluate(learner, data, episodes, chunk=4),
                          lambda: evaluate_reference(learner, data, episodes))


def test_meta_test_of_a_resnet_learner_equals_the_oracle(glyphs, monkeypatch, kernel):
    episodes, data = make_episodes(glyphs, "test", 5, 1, 2, 2, seed=0), Float64Images(glyphs)
    model = learner_model(arch="resnet10").double()
    protocol = AdaptProtocol(2, 0.01)
    assert_same_meta_test(monkeypatch, lambda: evaluate(Learner(model), data, episodes, protocol, chunk=2),
                          lambda: evaluate_reference(Learner(copy.deepcopy(model)), data, episodes, protocol))


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_meta_gradient_equals_one_backward_per_episode(kernel, first_order):
    model = learner_model().double()
    rng = torch.Generator().manual_seed(1)
    episodes = [(torch.randn(5, 3, 32, 32, generator=rng).double(), torch.arange(5),
                 torch.randn(10, 3, 32, 32, generator=rng).double(), torch.arange(5).repeat_interleave(2))
                for _ in range(3)]
    settings = ReplaySettings(inner_steps=2, first_order=first_order)
    gradients, accuracies = maml_meta_gradient(model, episodes, settings)
    assert len(accuracies) == 3 and all(0 <= a <= 100 for a in accuracies)
    for ours, reference in zip(gradients, maml_gradient_reference(model, episodes, settings)):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("recover_at", ["k", "k-1"])
def test_five_recoveries_equal_the_teacher_loop(tiny_pool, kernel, recover_at):
    """With the real (random) augmentation: each recovery draws from its own generator, so the
    task axis and the loop see the same codes, crops and flips."""
    teachers = [copy.deepcopy(tiny_pool[i].model).double() for i in (0, 1, 1)]  # one teacher twice
    student = learner_model(5).double().requires_grad_(False)
    generator = Generator(nz=16, ngf=8).double()
    labels = interleaved_targets(5, 4, torch.device("cpu"))
    augment = GeneratedImageAugment(tiny_pool.mean, tiny_pool.std)
    settings = RecoverySettings(steps=3, recover_at=recover_at)

    def jobs():
        return [(copy.deepcopy(generator), t, g) for t, g in zip(teachers, generators(3))]
    ours = recover_tasks(jobs(), labels, 16, student, augment, settings)
    for task, alone in zip(ours, recover_tasks_reference(jobs(), labels, 16, student, augment, settings)):
        assert task.updates == alone.updates
        torch.testing.assert_close(task.images, alone.images, rtol=1e-9, atol=1e-12)
        for name, grad in alone.meta_gradient.items():
            torch.testing.assert_close(task.meta_gradient[name], grad, rtol=1e-7, atol=1e-12)


def context(method, tmp_path):
    return RunContext(torch.device("cpu"), 0, method.settings, "conv4", 32, 3, 5, 1, tmp_path,
                      validator=lambda learner: 0.0)


def test_purer_pixel_gradient_equals_one_graph_over_the_teachers(tiny_pool, tmp_path, kernel):
    method = create_method("purer", {"candidate_teachers": 3, "replay_query": 3, "loss_quirk": True})
    training = PurerTraining(method.settings, tiny_pool, context(method, tmp_path))
    numpy_state = training.rng.bit_generator.state
    torch_state = training.torch_rng.get_state()
    before = training.data.images.detach().clone()
    training.invert(adversarial=False)
    ours = training.data.images.grad.clone()
    # the same draws again: the teachers from the numpy stream, the jitter from each one's generator
    training.rng.bit_generator.state, _ = numpy_state, training.torch_rng.set_state(torch_state)
    with torch.no_grad():
        training.data.images.copy_(before)
    chosen = [tiny_pool[int(i)] for i in training.rng.choice(len(tiny_pool), size=3, replace=False)]
    reference = purer_pixel_gradient_reference(training, chosen, [3, 2, 1], kernels.task_generators(training.torch_rng, 3))
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)


def test_bidf_events_equal_the_event_written_straight_through(tiny_pool, tmp_path, kernel):
    settings = {"support_per_class": 2, "query_per_class": 2, "generator_iterations": 3, "nz": 16, "ngf": 8,
                "kd_inner_steps": 2}
    method = create_method("bidf-mkd", settings)
    teachers = [replace(tiny_pool[i], model=copy.deepcopy(tiny_pool[i].model).double()) for i in (0, 1, 0)]
    results = []
    for ours in (True, False):
        training = BiDfTraining(method.settings, tiny_pool, context(method, tmp_path / str(ours)))
        training.model.double()
        training.generator.double()
        if ours:
            gradients = training.generation_events(teachers, boundary=True)
            bank = {c: training.bank.images_of(c) for c in training.bank.ready_classes}
            results.append((gradients, training.events))
            continue
        loss = 0.0
        for teacher, rng in zip(teachers, kernels.task_generators(training.torch_rng, 3)):
            event_loss, support, query = bidf_event_reference(training, teacher, rng, boundary=True)
            loss = loss + event_loss
            for images, labels in ((support, training.support_labels), (query, training.query_labels)):
                training.bank.add_task(teacher.class_ids, images, labels)
        results.append((torch.autograd.grad(loss, list(training.model.parameters())), 3))
        reference_bank = {c: training.bank.images_of(c) for c in training.bank.ready_classes}
    (gradients, events), (reference, reference_events) = results
    assert events == reference_events == 3
    for a, b in zip(gradients, reference):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
    assert list(bank) == list(reference_bank)
    for c in bank:  # uint8 truncation: a float64 pixel on a level boundary may land one level apart
        levels = bank[c].int() - reference_bank[c].int()
        assert int(levels.abs().max()) <= 1 and float((levels != 0).double().mean()) < 1e-3


def test_an_unknown_forced_kernel_is_one_line_before_any_cell(monkeypatch, tmp_path):
    from cli_harness import assert_one_line_error, call
    monkeypatch.setenv("DFMLBENCH_TASK_KERNEL", "grouped")
    result = call("run", "--suite", "quickstart", "--profile", "smoke", "--method", "random", "--out", tmp_path / "runs")
    assert_one_line_error(result, "DFMLBENCH_TASK_KERNEL='grouped'", "choose one of threads, loop")
    assert not list((tmp_path / "runs").rglob("*.json"))  # nothing ran
