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

from dfmlbench import stacked
from dfmlbench.errors import UserError
from dfmlbench.inversion.augment import random_roll
from dfmlbench.inversion.grid import save_task_grid
from dfmlbench.inversion.losses import BatchNormStatistics, total_variation
from dfmlbench.learner import Learner
from dfmlbench.maml import PlateauTrigger, ReplaySettings, maml_episodes_loss, maml_query_loss
from dfmlbench.method import Method, RecoveryUnit, RunContext
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


class Purer(Method):
    name = "purer"
    paper_budget = {"iterations": 15000, "adv_start": 4000}
    choices = CHOICES
    rules = {"jitter": integer(0), "adv_start": integer(0)}
    smoke_settings = {"iterations": 6, "adv_start": 3, "candidate_teachers": 2, "query": 3, "episode_batch": 2,
                      "inner_steps": 2, "val_interval": 2}
    defaults: dict[str, Any] = {
        "iterations": 15000,  # the FREE paper's PURER budget ("15000 iterations to converge")
        "candidate_teachers": 13,  # teachers per iteration (PURER+ candidate_size)
        "query": 15,  # pseudo images per class = shot + query
        "pixel_lr": 0.01,  # Adam on the pixels (PURER+; original PURER 0.25)
        "tv_weight": 1e-4,
        "bn_weight": 0.01,
        "l2_weight": 1e-5,
        "jitter": 2,  # random roll of up to +-2 pixels, one shift per batch
        "loss_quirk": False,  # PU1: official cumulative sum weights teacher j by (n-j+1)
        "adv_weight": 10.0,  # -adv_weight * L_outer on the adversarial task
        "adv_start": 4000,  # iterations without the adversarial term
        "adv_patience": 6,  # iterations without a new best train accuracy before an adversarial task
        "episode_batch": 4,
        "inner_steps": 5,  # PU2: PURER+/TDS; original PURER scripts 1
        "inner_lr": 0.01,
        "outer_lr": 1e-3,
        "first_order": False,
        "init": "random",  # PU3: random (PURER+) | average (original PURER's FedAvg init)
        "episode_split": "random",  # meta-training episodes: random support/query split of a class
        "val_interval": 500,
    }

    def fit(self, pool: TeacherPool | None, ctx: RunContext) -> Learner:
        assert pool is not None
        return PurerTraining(self.settings, pool, ctx).run()

    def recovery_unit(self, pool: TeacherPool, ctx: RunContext) -> RecoveryUnit:
        """One pseudo-data update through the chosen teachers (the rare adversarial updates,
        which add a MAML term, are left out)."""
        training = PurerTraining(self.settings, pool, ctx)

        def iteration() -> None:
            with ctx.recovery():
                training.invert(adversarial=False)
        return RecoveryUnit("iteration", self.settings["iterations"], iteration)


class PurerTraining:
    """`batched`: the chosen teachers' losses (and the meta-step's episodes) as one stacked
    computation where the architectures allow; False = the per-teacher reference loop;
    None = the device's default (stacked on a GPU, loops on a CPU)."""

    def __init__(self, settings: dict[str, Any], pool: TeacherPool, ctx: RunContext,
                 batched: bool | None = None) -> None:
        batched = stacked.batch_by_default(ctx.device) if batched is None else batched
        self.batched = batched
        self.s, self.pool, self.ctx = settings, pool, ctx
        classes = sorted({c for t in pool for c in t.class_ids})
        if len(classes) < ctx.way:
            raise UserError(f"purer: the pool covers {len(classes)} classes, a {ctx.way}-way task needs {ctx.way}")
        shape = (pool.in_channels, pool.image_size, pool.image_size)
        self.data = PseudoDataset(classes, ctx.shot + settings["query"], shape,
                                  ctx.generator("purer-pixels")).to(ctx.device)
        self.pixel_optimizer = torch.optim.Adam(self.data.parameters(), lr=settings["pixel_lr"])
        self.model = ctx.build_learner_model()
        if settings["init"] == "average":
            copy_parameters(self.model, average_state([t.model.state_dict() for t in pool]))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings["outer_lr"])
        self.maml = ReplaySettings(ctx.way, ctx.shot, settings["query"], settings["inner_steps"],
                                   settings["inner_lr"], settings["episode_batch"],
                                   first_order=settings["first_order"], batched=batched)
        self.rng = np.random.default_rng(ctx.generator("purer-numpy").initial_seed())
        self.torch_rng = ctx.generator("purer-torch")
        self.selection = ModelSelection(ctx, self.model, settings["val_interval"], settings["iterations"])
        self.adversarial_tasks = 0

    def run(self) -> Learner:
        s, ctx = self.s, self.ctx
        curriculum = PlateauTrigger(s["adv_patience"])
        adversarial = False
        with ctx.progress(s["iterations"], "purer iterations") as bar:
            for iteration in range(1, s["iterations"] + 1):
                with ctx.recovery():
                    loss = self.invert(adversarial)
                if iteration % 10 == 0:
                    ctx.log("inversion_loss", loss, iteration)
                adversarial = False
                accuracy = self.meta_step()
                if iteration > s["adv_start"] and curriculum.stalled(accuracy):
                    adversarial = True
                if self.selection.due(iteration):
                    self.selection.observe(iteration)
                bar.update(1)
        ctx.info.update(adversarial_tasks=self.adversarial_tasks, pseudo_classes=len(self.data.class_ids),
                        pseudo_images=int(self.data.images.shape[0] * self.data.images.shape[1]))
        self.save_pseudo_grid()
        return self.selection.finish("PURER")

    def teacher_loss(self, teacher: Teacher) -> torch.Tensor:
        """DeepInversion loss of one teacher on its classes' pseudo images (jittered)."""
        s = self.s
        x, y = self.data.teacher_batch(teacher)
        x = random_roll(x, s["jitter"], self.torch_rng)
        with BatchNormStatistics(teacher.model) as statistics:
            logits = teacher.model(x)
        return (F.cross_entropy(logits, y) + s["tv_weight"] * total_variation(x)
                + s["bn_weight"] * statistics.total() + s["l2_weight"] * torch.linalg.vector_norm(x))

    def teacher_losses_stacked(self, teachers: list[Teacher]) -> torch.Tensor:
        """`teacher_loss` of each teacher, (T,), the teachers run as one stacked Conv4 (their
        jitter drawn in the same order as the loop draws them)."""
        s = self.s
        batches = [self.data.teacher_batch(t) for t in teachers]
        x = torch.stack([random_roll(images, s["jitter"], self.torch_rng) for images, _ in batches])
        y = torch.stack([labels for _, labels in batches])
        params, buffers = stacked.stack_modules([t.model for t in teachers])
        gaps: list[torch.Tensor] = []
        logits = stacked.forward(teachers[0].model, params, x, buffers, gaps)  # type: ignore[arg-type]
        tv = torch.stack([total_variation(images) for images in x])
        l2 = torch.linalg.vector_norm(x.flatten(1), dim=1)
        return (stacked.task_losses(logits, y) + s["tv_weight"] * tv
                + s["bn_weight"] * torch.stack(gaps).sum(0) + s["l2_weight"] * l2)

    def teacher_losses(self, teachers: list[Teacher]) -> list[torch.Tensor] | torch.Tensor:
        models = [t.model for t in teachers]
        same_shape = len({tuple(p.shape for p in m.parameters()) for m in models}) == 1
        if self.batched and same_shape and all(stacked.stackable_teacher(m) for m in models):
            return self.teacher_losses_stacked(teachers)
        return [self.teacher_loss(t) for t in teachers]

    def invert(self, adversarial: bool) -> float:
        """Steps 1-3: candidate teachers, their summed loss (+ the adversarial term), one Adam step."""
        s = self.s
        count = min(s["candidate_teachers"], len(self.pool))
        chosen = [self.pool[int(i)] for i in self.rng.choice(len(self.pool), size=count, replace=False)]
        # PU1: the official running cumulative sum weights the j-th teacher (count - j).
        weights = [count - j if s["loss_quirk"] else 1 for j in range(count)]
        self.pixel_optimizer.zero_grad(set_to_none=True)
        loss = sum(w * term for w, term in zip(weights, self.teacher_losses(chosen)))
        if adversarial:
            loss = loss - s["adv_weight"] * self.adversarial_loss()
            self.adversarial_tasks += 1
        loss.backward()
        self.pixel_optimizer.step()
        return float(loss.detach())

    def adversarial_loss(self) -> torch.Tensor:
        """The meta-learner's MAML query loss on a pseudo task, differentiable w.r.t. the pixels
        through the inner and outer loops (second order); the meta-learner itself is frozen."""
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        xs, ys, xq, yq = self.data.episode(self.ctx.way, self.ctx.shot, self.rng, ordered=True, detach=False)
        loss, _ = maml_query_loss(self.model, xs, ys, xq, yq, replace(self.maml, first_order=False), params)
        return loss

    def meta_step(self) -> float:
        """Step 4: `episode_batch` MAML episodes on the (detached) pseudo data, summed, one Adam step."""
        self.optimizer.zero_grad(set_to_none=True)
        ordered = self.s["episode_split"] == "ordered"
        episodes = [self.data.episode(self.ctx.way, self.ctx.shot, self.rng, ordered, detach=True)
                    for _ in range(self.s["episode_batch"])]
        loss, accuracies = maml_episodes_loss(self.model, episodes, self.maml)
        loss.backward()
        self.optimizer.step()
        return float(np.mean(accuracies))

    def save_pseudo_grid(self) -> None:
        """The pseudo images of five classes, one row per class (de-normalised)."""
        mean = torch.tensor(self.pool.mean).view(-1, 1, 1)
        std = torch.tensor(self.pool.std).view(-1, 1, 1)
        images = self.data.images.detach().cpu()[:5].flatten(0, 1) * std + mean
        labels = torch.arange(len(images)) // self.data.per_class
        save_task_grid(images, labels, self.ctx.artifacts_dir / "recovered_task.png", self.data.per_class)
