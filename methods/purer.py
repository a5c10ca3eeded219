"""PURER (Hu et al., CVPR 2023) as baselines.md §2.6 describes it: a learnable pseudo dataset
inverted from a random subset of teachers per iteration (DeepInversion loss), an adversarial
episode curriculum that makes it harder for the current meta-learner, and MAML on episodes
drawn from it. Recovery time = the pseudo-dataset updates (steps 1-3), as the paper times it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfmlbench.checkpoint import numpy_rng_state, set_numpy_rng_state
from dfmlbench.errors import UserError
from dfmlbench.inversion.augment import random_roll
from dfmlbench.inversion.grid import save_task_grid
from dfmlbench.inversion.losses import BatchNormStatistics, total_variation
from dfmlbench.learner import Learner
from dfmlbench.kernels import in_layout, task_generators, task_map
from dfmlbench.maml import PlateauTrigger, ReplaySettings, add_gradients, maml_meta_gradient, maml_query_loss
from dfmlbench.method import Method, RecoveryUnit, RunContext
from dfmlbench.methods import register
from dfmlbench.methods.average import average_state
from dfmlbench.models import copy_parameters
from dfmlbench.pool import Teacher, TeacherPool
from dfmlbench.schema import integer
from dfmlbench.selection import ModelSelection

CHOICES = {"init": ("random", "average"), "episode_split": ("random", "ordered")}


class PseudoDataset(nn.Module):
    """One learnable image tensor per class the pool covers, in normalised pixel space.

    The official code allocates every meta-train class; with 100 teachers on 64 classes all are
    covered. Classes no teacher knows would never receive a gradient and stay noise, so only the
    pool's classes are allocated (docs/deviations.md PU4)."""

    def __init__(self, class_ids: list[int], per_class: int, shape: tuple[int, int, int],
                 rng: torch.Generator) -> None:
        super().__init__()
        self.class_ids = sorted(class_ids)
        self.row = {c: i for i, c in enumerate(self.class_ids)}
        self.images = nn.Parameter(torch.randn(len(self.class_ids), per_class, *shape, generator=rng))

    @property
    def per_class(self) -> int:
        return self.images.shape[1]

    def teacher_batch(self, teacher: Teacher) -> tuple[torch.Tensor, torch.Tensor]:
        """The images of a teacher's classes, class-major, with its relative labels 0..way-1."""
        rows = torch.tensor([self.row[c] for c in teacher.class_ids], device=self.images.device)
        x = self.images[rows].flatten(0, 1)
        return x, torch.arange(len(rows), device=x.device).repeat_interleave(self.per_class)

    def episode(self, way: int, shot: int, rng: np.random.Generator, ordered: bool,
                detach: bool) -> tuple[torch.Tensor, ...]:
        """A `way`-way task from `way` random classes: `shot` support and the remaining images as
        query per class, class-major. `ordered` takes the first `shot` as support (PURER+ for the
        adversarial task), otherwise a random split."""
        rows = torch.from_numpy(rng.choice(len(self.class_ids), size=way, replace=False))
        images = self.images.detach() if detach else self.images
        chosen = images[rows.to(images.device)]  # (way, per_class, C, H, W)
        if not ordered:
            order = torch.from_numpy(np.stack([rng.permutation(self.per_class) for _ in range(way)]))
            chosen = chosen[torch.arange(way)[:, None], order]
        labels = torch.arange(way, device=chosen.device)
        query = self.per_class - shot
        return (chosen[:, :shot].flatten(0, 1), labels.repeat_interleave(shot),
                chosen[:, shot:].flatten(0, 1), labels.repeat_interleave(query))


@register("purer", "PURER: learnable pseudo dataset (DeepInversion), adversarial episode curriculum, MAML",
          "PURER")
class Purer(Method):
    paper_budget = {"iterations": 15000, "adv_start": 4000}
    choices = CHOICES
    rules = {"jitter": integer(0), "adv_start": integer(0)}
    smoke_settings = {"iterations": 6, "adv_start": 3, "candidate_teachers": 2, "replay_query": 3,
                      "replay_episode_batch": 2, "replay_inner_steps": 2, "val_interval": 2}
    defaults: dict[str, Any] = {
        "iterations": 15000,  # the FREE paper's PURER budget ("15000 iterations to converge")
        "candidate_teachers": 13,  # teachers per iteration (PURER+ candidate_size)
        "replay_query": 15,  # pseudo images per class = shot + replay_query (MAML episodes on them)
        "pixel_lr": 0.01,  # Adam on the pixels (PURER+; original PURER 0.25)
        "tv_weight": 1e-4,
        "bn_weight": 0.01,
        "l2_weight": 1e-5,
        "jitter": 2,  # random roll of up to +-2 pixels, one shift per batch
        "loss_quirk": False,  # PU1: official cumulative sum weights teacher j by (n-j+1)
        "adv_weight": 10.0,  # -adv_weight * L_outer on the adversarial task
        "adv_start": 4000,  # iterations without the adversarial term
        "adv_patience": 6,  # iterations without a new best train accuracy before an adversarial task
        "replay_episode_batch": 4,
        "replay_inner_steps": 5,  # PU2: PURER+/TDS; original PURER scripts 1
        "replay_inner_lr": 0.01,
        "outer_lr": 1e-3,
        "replay_first_order": False,
        "init": "random",  # PU3: random (PURER+) | average (original PURER's FedAvg init)
        "episode_split": "random",  # meta-training episodes: random support/query split of a class
        "val_interval": 500,
    }

    def fit(self, pool: TeacherPool | None, ctx: RunContext) -> Learner:
        assert pool is not None
        training, first = ctx.checkpoints.resume(lambda: PurerTraining(self.settings, pool, ctx), "iteration")
        return training.run(first)

    def recovery_unit(self, pool: TeacherPool, ctx: RunContext) -> RecoveryUnit:
        """One pseudo-data update through the chosen teachers (the rare adversarial updates,
        which add a MAML term, are left out)."""
        training = PurerTraining(self.settings, pool, ctx)

        def iteration() -> None:
            with ctx.recovery():
                training.invert(adversarial=False)
        return RecoveryUnit("iteration", self.settings["iterations"], iteration)


class PurerTraining:
    def __init__(self, settings: dict[str, Any], pool: TeacherPool, ctx: RunContext) -> None:
        self.s, self.pool, self.ctx = settings, pool, ctx
        classes = sorted({c for t in pool for c in t.class_ids})
        if len(classes) < ctx.way:
            raise UserError(f"purer: the pool covers {len(classes)} classes, a {ctx.way}-way task needs {ctx.way}")
        shape = (pool.in_channels, pool.image_size, pool.image_size)
        self.data = PseudoDataset(classes, ctx.shot + settings["replay_query"], shape,
                                  ctx.generator("purer-pixels")).to(ctx.device)
        self.pixel_optimizer = torch.optim.Adam(self.data.parameters(), lr=settings["pixel_lr"])
        self.model = ctx.build_learner_model()
        if settings["init"] == "average":
            copy_parameters(self.model, average_state([t.model.state_dict() for t in pool]))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings["outer_lr"])
        self.maml = ReplaySettings.from_settings(settings, ctx.way, ctx.shot)
        self.rng = np.random.default_rng(ctx.generator("purer-numpy").initial_seed())
        self.torch_rng = ctx.generator("purer-torch")
        self.selection = ModelSelection(ctx, self.model, settings["val_interval"], settings["iterations"])
        self.adversarial_tasks = 0
        self.curriculum = PlateauTrigger(settings["adv_patience"])
        self.adversarial_next = False  # the next inversion adds the adversarial term

    def run(self, first: int = 1) -> Learner:
        """Iterations `first`.. to the end (after `ctx.checkpoints.resume`, from a checkpoint's)."""
        s, ctx = self.s, self.ctx
        with ctx.progress(s["iterations"], "purer iterations") as bar:
            bar.update(first - 1)
            for iteration in range(first, s["iterations"] + 1):
                with ctx.recovery():
                    loss = self.invert(self.adversarial_next)
                if iteration % 10 == 0:
                    ctx.log("inversion_loss", loss, iteration)
                self.adversarial_next = False
                accuracy = self.meta_step()
                if iteration > s["adv_start"] and self.curriculum.stalled(accuracy):
                    self.adversarial_next = True
                if self.selection.due(iteration):
                    self.selection.observe(iteration)
                ctx.checkpoints.after(iteration, s["iterations"], self)
                bar.update(1)
        ctx.checkpoints.finish()
        ctx.info.update(adversarial_tasks=self.adversarial_tasks, pseudo_classes=len(self.data.class_ids),
                        pseudo_images=int(self.data.images.shape[0] * self.data.images.shape[1]))
        self.save_pseudo_grid()
        return self.selection.finish("PURER")

    def state(self) -> dict[str, Any]:
        """Everything the next iterations depend on (dfmlbench.checkpoint)."""
        return {"data": self.data.state_dict(), "pixel_optimizer": self.pixel_optimizer.state_dict(),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "numpy_rng": numpy_rng_state(self.rng), "torch_rng": self.torch_rng.get_state(),
                "selection": self.selection.state_dict(), "curriculum": self.curriculum.state_dict(),
                "adversarial_next": self.adversarial_next, "adversarial_tasks": self.adversarial_tasks}

    def restore(self, state: dict[str, Any]) -> None:
        self.data.load_state_dict(state["data"])
        self.pixel_optimizer.load_state_dict(state["pixel_optimizer"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_numpy_rng_state(self.rng, state["numpy_rng"])
        self.torch_rng.set_state(state["torch_rng"])
        self.selection.load_state_dict(state["selection"])
        self.curriculum.load_state_dict(state["curriculum"])
        self.adversarial_next, self.adversarial_tasks = state["adversarial_next"], state["adversarial_tasks"]

    def teacher_loss(self, teacher: Teacher, rng: torch.Generator) -> torch.Tensor:
        """DeepInversion loss of one teacher on its classes' pseudo images (jittered)."""
        s = self.s
        x, y = self.data.teacher_batch(teacher)
        x = in_layout(random_roll(x, s["jitter"], rng))
        with BatchNormStatistics(teacher.model) as statistics:
            logits = teacher.model(x)
        return (F.cross_entropy(logits, y) + s["tv_weight"] * total_variation(x)
                + s["bn_weight"] * statistics.total() + s["l2_weight"] * torch.linalg.vector_norm(x))

    def invert(self, adversarial: bool) -> float:
        """Steps 1-3: candidate teachers, their summed loss (+ the adversarial term), one Adam step.
        The chosen teachers are a task axis (dfmlbench.kernels): each one's pixel gradient is
        taken on its own (its jitter from its own generator) and they are summed in order."""
        s = self.s
        count = min(s["candidate_teachers"], len(self.pool))
        chosen = [self.pool[int(i)] for i in self.rng.choice(len(self.pool), size=count, replace=False)]
        # PU1: the official running cumulative sum weights the j-th teacher (count - j).
        weights = [count - j if s["loss_quirk"] else 1 for j in range(count)]

        def weighted_gradient(job: tuple[Teacher, int, torch.Generator]) -> tuple[float, torch.Tensor]:
            teacher, weight, rng = job
            loss = weight * self.teacher_loss(teacher, rng)
            return float(loss.detach()), torch.autograd.grad(loss, self.data.images)[0]

        jobs = list(zip(chosen, weights, task_generators(self.torch_rng, count)))
        results = task_map(weighted_gradient, jobs, self.ctx.device)
        self.pixel_optimizer.zero_grad(set_to_none=True)
        total = sum(loss for loss, _ in results)
        if adversarial:
            loss = -s["adv_weight"] * self.adversarial_loss()
            loss.backward()
            total += float(loss.detach())
            self.adversarial_tasks += 1
        gradient = torch.stack([grad for _, grad in results]).sum(0)
        images = self.data.images
        images.grad = gradient if images.grad is None else images.grad + gradient
        self.pixel_optimizer.step()
        return total

    def adversarial_loss(self) -> torch.Tensor:
        """The meta-learner's MAML query loss on a pseudo task, differentiable w.r.t. the pixels
        through the inner and outer loops (second order); the meta-learner itself is frozen."""
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        xs, ys, xq, yq = self.data.episode(self.ctx.way, self.ctx.shot, self.rng, ordered=True, detach=False)
        loss, _ = maml_query_loss(self.model, xs, ys, xq, yq, replace(self.maml, first_order=False), params)
        return loss

    def meta_step(self) -> float:
        """Step 4: `replay_episode_batch` MAML episodes on the (detached) pseudo data, summed, one Adam step."""
        self.optimizer.zero_grad(set_to_none=True)
        ordered = self.s["episode_split"] == "ordered"
        episodes = [self.data.episode(self.ctx.way, self.ctx.shot, self.rng, ordered, detach=True)
                    for _ in range(self.s["replay_episode_batch"])]
        gradients, accuracies = maml_meta_gradient(self.model, episodes, self.maml)
        add_gradients(self.model, gradients)
        self.optimizer.step()
        return float(np.mean(accuracies))

    def save_pseudo_grid(self) -> None:
        """The pseudo images of five classes, one row per class (de-normalised)."""
        mean = torch.tensor(self.pool.mean).view(-1, 1, 1)
        std = torch.tensor(self.pool.std).view(-1, 1, 1)
        images = self.data.images.detach().cpu()[:5].flatten(0, 1) * std + mean
        labels = torch.arange(len(images)) // self.data.per_class
        save_task_grid(images, labels, self.ctx.artifacts_dir / "recovered_task.png", self.data.per_class)
