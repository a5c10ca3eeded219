"""One-at-a-time reference implementations: the library's task-axis paths (dfmlbench.kernels)
are tested against these. Each runs its tasks in order on the calling thread, one graph and
one backward() at a time, with modules of its own where the library shares or copies them."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from dfmlbench import evaluation
from dfmlbench.evaluation import AdaptProtocol, _accuracy, episode_tensors
from dfmlbench.inversion.recovery import recover_task
from dfmlbench.maml import maml_query_loss


def evaluate_reference(learner, dataset, episodes,
                       protocol: AdaptProtocol = AdaptProtocol(),
                       device: torch.device | str = "cpu") -> np.ndarray:
    """The plain path: one episode at a time, a module copy, torch.optim.SGD and backward().

    Independent of `torch.func` and of the kernels, the ground truth of `evaluate`.
    """
    steps = protocol.steps if learner.adapt_steps is None else learner.adapt_steps
    accuracies = np.empty(len(episodes), dtype=np.float64)
    for index in range(len(episodes)):
        episode = episode_tensors(dataset, episodes, index, device)
        model = copy.deepcopy(learner.model).to(device).train()
        if learner.init_for_episode is not None:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(learner.init_for_episode(index)[name])
        optimizer = torch.optim.SGD(model.parameters(), lr=protocol.lr)
        xs, ys, xq = episode.support, episode.support_labels, episode.query
        for _ in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(model(xs), ys).backward()
            optimizer.step()
        with torch.no_grad():
            prediction = evaluation._predict(learner, model(xs), ys, model(xq), episodes.way)
        accuracies[index] = _accuracy(prediction, episode.query_labels)
    return accuracies


def maml_gradient_reference(model, episodes, settings) -> list[torch.Tensor]:
    """The summed meta-batch loss's gradient, accumulated by one backward() per episode."""
    model.zero_grad(set_to_none=True)
    for episode in episodes:
        maml_query_loss(model, *episode, settings)[0].backward()
    gradients = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return gradients


def recover_tasks_reference(jobs, labels, nz, student, augment, settings, meta_gradient=True):
    """FIVE's b recoveries in turn, each on its own generator, teacher and random numbers."""
    return [recover_task(generator, teacher, labels, nz, student, augment, settings, rng, meta_gradient)
            for generator, teacher, rng in jobs]


def purer_pixel_gradient_reference(training, teachers, weights, rngs) -> torch.Tensor:
    """The gradient of PURER's weighted teacher losses on the pixels, summed in one graph."""
    loss = sum(w * training.teacher_loss(t, rng) for t, w, rng in zip(teachers, weights, rngs))
    return torch.autograd.grad(loss, training.data.images)[0]


def bidf_event_reference(training, teacher, rng, boundary: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One BiDf-MKD generation event written straight through on one thread: (outer KD loss,
    recovered support, recovered query). The loss is differentiable w.r.t. the meta-learner."""
    from dfmlbench.adaptation import forward
    from dfmlbench.inversion.generator import reset_generator
    from dfmlbench.inversion.losses import kd_loss
    from dfmlbench.inversion.recovery import recover_lowest_loss
    s, model = training.s, training.model

    def recovered(labels, student, adv_weight):
        generator = copy.deepcopy(training.generator)
        reset_generator(generator, rng)
        return recover_lowest_loss(generator, teacher.model, labels, s["nz"], student, training.augment,
                                   training.recovery_settings(adv_weight), rng)

    def views_and_targets(images):
        views = training.augment(images, rng)
        with torch.no_grad():
            return views, teacher.model(views)

    support = recovered(training.support_labels, None, 0.0)
    views, targets = views_and_targets(support)
    adapted = dict(model.named_parameters())
    for _ in range(s["kd_inner_steps"]):
        grads = torch.autograd.grad(kd_loss(forward(model, adapted, views), targets, s["kd_quirk"]),
                                    list(adapted.values()), create_graph=not s["kd_first_order"])
        adapted = {n: p - s["kd_inner_lr"] * g for (n, p), g in zip(adapted.items(), grads)}
    frozen = {n: p.detach() for n, p in adapted.items()}
    student = (lambda x: forward(model, frozen, x)) if boundary else None
    query = recovered(training.query_labels, student, s["adv_weight"] if boundary else 0.0)
    query_views, query_targets = views_and_targets(query)
    return kd_loss(forward(model, adapted, query_views), query_targets, s["kd_quirk"]), support, query
