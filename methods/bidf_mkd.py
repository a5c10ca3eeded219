"""BiDf-MKD (Hu et al., ICML 2023), white-box, as baselines.md §2.7 describes it.

Each generation event takes one teacher: a freshly reset generator recovers a support set
(CE only), the meta-learner adapts to it by KD for 10 second-order steps, a reset generator
recovers a boundary query set where the teacher and the *adapted* student disagree, and the
outer KD loss on that query is one episode of the meta-batch. Both sets enter the memory bank;
every other episode is MAML replay on bank tasks. Recovery time = the two recoveries only."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from dfmlbench import stacked
from dfmlbench.adaptation import Params, forward, sgd_steps
from dfmlbench.inversion.augment import GeneratedImageAugment
from dfmlbench.inversion.bank import MemoryBank
from dfmlbench.inversion.grid import save_task_grid
from dfmlbench.inversion.generator import Generator, reset_generator
from dfmlbench.inversion.losses import kd_loss
from dfmlbench.inversion.recovery import (RecoverySettings, StackedTeachers, interleaved_targets, recover_lowest_loss,
                                         recover_lowest_loss_stacked)
from dfmlbench.learner import Learner
from dfmlbench.maml import PlateauTrigger, ReplaySettings, maml_tasks_loss
from dfmlbench.method import Method, RecoveryUnit, RunContext
from dfmlbench.pool import Teacher, TeacherPool
from dfmlbench.schema import integer
from dfmlbench.selection import ModelSelection

CHOICES = {"event_rule": ("periodic", "plateau"), "aug_granularity": ("batch", "sample")}


class BiDfMKD(Method):
    name = "bidf-mkd"
    paper_budget = {"meta_iterations": 60000, "adv_start": 4000}
    choices = CHOICES
    rules = {"adv_start": integer(0)}
    smoke_settings = {"meta_iterations": 12, "adv_start": 6, "episode_batch": 2, "generate_interval": 6,
                      "support_per_class": 3, "query_per_class": 3, "generator_iterations": 3, "nz": 16, "ngf": 8,
                      "kd_inner_steps": 2, "inner_steps": 2, "replay_query": 3, "val_interval": 6}
    defaults: dict[str, Any] = {
        "meta_iterations": 60000,  # episode_train 240000 / episode_batch 4
        "episode_batch": 4,
        "event_rule": "periodic",  # B2: periodic (TDS) | plateau (mainKD)
        "generate_interval": 200,  # meta-iterations between events (periodic) or without gain (plateau)
        "support_per_class": 30,  # num_sup_kd
        "query_per_class": 30,  # num_qur_kd
        "generator_iterations": 200,
        "generator_lr": 1e-3,  # Glr, for the generator and z alike
        "nz": 256,
        "ngf": 64,
        "kd_inner_steps": 10,  # inner_update_num_kd
        "inner_steps": 5,  # replay MAML inner steps
        "inner_lr": 0.01,
        "outer_lr": 1e-3,
        "first_order": False,
        "replay_query": 15,
        "adv_weight": 1.0,
        "adv_start": 4000,  # meta-iterations before the boundary query uses the adapted student
        "adv_quirk": False,  # the official inner-product form of the adversarial term (as FREE D5)
        "kd_quirk": False,  # the official softmax-as-log-prob KD (as FREE D6)
        "bank_slots": 20,  # max_batch_per_class
        "aug_granularity": "batch",
        "val_interval": 2000,
    }

    def fit(self, pool: TeacherPool | None, ctx: RunContext) -> Learner:
        assert pool is not None
        return BiDfTraining(self.settings, pool, ctx).run()

    def recovery_unit(self, pool: TeacherPool, ctx: RunContext) -> RecoveryUnit:
        """One generation event (support and boundary query recovered for a random teacher);
        every `generate_interval` meta-iterations run `episode_batch` of them."""
        training, s = BiDfTraining(self.settings, pool, ctx), self.settings
        rng = np.random.default_rng(0)
        events = math.ceil(s["meta_iterations"] / s["generate_interval"]) * s["episode_batch"]
        return RecoveryUnit("event", events,
                            lambda: training.generation_event(pool[int(rng.integers(len(pool)))], boundary=True))


class BiDfTraining:
    """`batched`: an event meta-iteration's generation events (and replay meta-batches) as one
    stacked computation where the architectures allow; False = the one-event reference loop;
    None = the device's default (stacked on a GPU, loops on a CPU)."""

    def __init__(self, settings: dict[str, Any], pool: TeacherPool, ctx: RunContext,
                 batched: bool | None = None) -> None:
        batched = stacked.batch_by_default(ctx.device) if batched is None else batched
        self.s, self.pool, self.ctx, self.batched = settings, pool, ctx, batched
        self.device = ctx.device
        self.model = ctx.build_learner_model()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings["outer_lr"])
        self.generator = Generator(settings["nz"], settings["ngf"], pool.image_size, pool.in_channels).to(self.device)
        self.augment = GeneratedImageAugment(pool.mean, pool.std, granularity=settings["aug_granularity"])
        self.bank = MemoryBank(settings["bank_slots"])
        self.rng = np.random.default_rng(ctx.generator("bidf-numpy").initial_seed())
        self.torch_rng = ctx.generator("bidf-torch")
        self.replay_settings = ReplaySettings(ctx.way, ctx.shot, settings["replay_query"], settings["inner_steps"],
                                              settings["inner_lr"], settings["episode_batch"],
                                              first_order=settings["first_order"], batched=batched)
        self.support_labels = interleaved_targets(ctx.way, settings["support_per_class"], self.device)
        self.query_labels = interleaved_targets(ctx.way, settings["query_per_class"], self.device)
        self.selection = ModelSelection(ctx, self.model, settings["val_interval"], settings["meta_iterations"])
        self.events = 0
        self.last_support: torch.Tensor | None = None

    def run(self) -> Learner:
        s, ctx = self.s, self.ctx
        plateau = PlateauTrigger(s["generate_interval"])
        pending = True  # an event at the start, under either rule
        with ctx.progress(s["meta_iterations"], "bidf-mkd meta-iterations") as bar:
            for iteration in range(1, s["meta_iterations"] + 1):
                if s["event_rule"] == "periodic":
                    pending = pending or (iteration - 1) % s["generate_interval"] == 0
                pending = pending or not self.bank_ready()
                accuracy = self.meta_iteration(iteration, event=pending)
                if pending:
                    pending = False
                elif s["event_rule"] == "plateau":
                    pending = plateau.stalled(accuracy)
                if self.selection.due(iteration):
                    self.selection.observe(iteration)
                bar.update(1)
        ctx.info.update(generation_events=self.events, bank_images=len(self.bank),
                        bank_classes=len(self.bank.ready_classes))
        self.save_recovered_grid()
        return self.selection.finish("BiDf-MKD")

    def bank_ready(self) -> bool:
        return len(self.bank.classes_with(self.ctx.shot + self.s["replay_query"])) >= self.ctx.way

    def meta_iteration(self, iteration: int, event: bool) -> float:
        """`episode_batch` episode losses, summed into one Adam step: generation events (one
        teacher each) or MAML replay. Returns the replay train accuracy (nan for events)."""
        self.optimizer.zero_grad(set_to_none=True)
        accuracies: list[float] = []
        if event:
            teachers = [self.pool[int(self.rng.integers(len(self.pool)))] for _ in range(self.s["episode_batch"])]
            boundary = iteration > self.s["adv_start"]
            if self.can_stack(teachers):
                self.generation_events_stacked(teachers, boundary).backward()
            else:
                for teacher in teachers:
                    self.generation_event(teacher, boundary).backward()
        else:
            tasks = [self.bank.sample_task(self.ctx.way, self.ctx.shot, self.s["replay_query"], self.rng)
                     for _ in range(self.s["episode_batch"])]
            loss, accuracies = maml_tasks_loss(self.model, tasks, self.augment.normalize,
                                               self.replay_settings, self.device)
            loss.backward()
        self.optimizer.step()
        accuracy = float(np.mean(accuracies)) if accuracies else float("nan")
        if accuracies:
            self.ctx.log("replay_accuracy", accuracy, iteration)
        return accuracy

    def recover(self, teacher: Teacher, labels: torch.Tensor, student: Any, adv_weight: float) -> torch.Tensor:
        """A freshly reset generator trained on one teacher; the timed part (the Time column)."""
        settings = RecoverySettings(self.s["generator_iterations"], self.s["generator_lr"], self.s["generator_lr"],
                                    adv_weight=adv_weight, adv_quirk=self.s["adv_quirk"])
        with self.ctx.recovery():
            reset_generator(self.generator, self.torch_rng)
            return recover_lowest_loss(self.generator, teacher.model, labels, self.s["nz"], student,
                                       self.augment, settings, self.torch_rng)

    def kd_targets(self, teacher: Teacher, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        views = self.augment(images, self.torch_rng)
        with torch.no_grad():
            return views, teacher.model(views)

    def generation_event(self, teacher: Teacher, boundary: bool) -> torch.Tensor:
        """Support recovery, inner KD, boundary-query recovery, outer KD (the episode's loss)."""
        s = self.s
        self.events += 1
        support = self.recover(teacher, self.support_labels, None, 0.0)
        views, targets = self.kd_targets(teacher, support)
        adapted = self.adapt_by_kd(views, targets)
        frozen = {name: p.detach() for name, p in adapted.items()}
        student = (lambda x: forward(self.model, frozen, x)) if boundary else None
        query = self.recover(teacher, self.query_labels, student, s["adv_weight"] if boundary else 0.0)
        query_views, query_targets = self.kd_targets(teacher, query)
        loss = kd_loss(forward(self.model, adapted, query_views), query_targets, s["kd_quirk"])
        for images, labels in ((support, self.support_labels), (query, self.query_labels)):
            self.bank.add_task(teacher.class_ids, images, labels)
        self.last_support = support
        return loss

    def can_stack(self, teachers: list[Teacher]) -> bool:
        models = [t.model for t in teachers]
        return (self.batched and stacked.stackable(self.model)
                and len({tuple(p.shape for p in m.parameters()) for m in models}) == 1
                and all(stacked.stackable_teacher(m) for m in models))

    def fresh_generators(self, count: int) -> tuple[list[dict[str, torch.Tensor]], list[torch.Tensor]]:
        """Reset generator weights and latent codes for `count` events, support then query for
        each, drawn in the order the one-event loop draws them."""
        inits, codes = [], []
        for _ in range(count):
            for labels in (self.support_labels, self.query_labels):
                reset_generator(self.generator, self.torch_rng)
                inits.append({n: p.detach().clone() for n, p in self.generator.named_parameters()})
                codes.append(torch.randn(len(labels), self.s["nz"], generator=self.torch_rng)
                             .to(self.device, inits[-1]["project.weight"].dtype))
        return inits, codes

    def generation_events_stacked(self, teachers: list[Teacher], boundary: bool) -> torch.Tensor:
        """`generation_event` for each teacher, all at once (stacked generators, teachers and
        adapted students); returns the summed outer KD loss."""
        s, count = self.s, len(teachers)
        self.events += count
        inits, codes = self.fresh_generators(count)

        def stacked_init(phase: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
            chosen = inits[phase::2]
            return ({n: torch.stack([c[n] for c in chosen]) for n in chosen[0]}, torch.stack(codes[phase::2]))

        group = StackedTeachers.of([t.model for t in teachers])
        settings = RecoverySettings(s["generator_iterations"], s["generator_lr"], s["generator_lr"],
                                    adv_weight=0.0, adv_quirk=s["adv_quirk"])
        with self.ctx.recovery():
            support = recover_lowest_loss_stacked(self.generator, *stacked_init(0), self.support_labels, group,
                                                  self.augment, settings, self.torch_rng)
        views, targets = self.stacked_kd_targets(group, support)
        adapted = stacked.sgd_steps(
            lambda p: self.kd_losses(stacked.forward(self.model, p, views), targets),  # type: ignore[arg-type]
            stacked.stack(dict(self.model.named_parameters()), count), s["kd_inner_steps"], s["inner_lr"],
            s["first_order"])
        frozen = {n: p.detach() for n, p in adapted.items()}
        query_group = group.with_student(self.model, frozen) if boundary else group
        settings = RecoverySettings(s["generator_iterations"], s["generator_lr"], s["generator_lr"],
                                    adv_weight=s["adv_weight"] if boundary else 0.0, adv_quirk=s["adv_quirk"])
        with self.ctx.recovery():
            query = recover_lowest_loss_stacked(self.generator, *stacked_init(1), self.query_labels, query_group,
                                                self.augment, settings, self.torch_rng)
        query_views, query_targets = self.stacked_kd_targets(group, query)
        loss = self.kd_losses(stacked.forward(self.model, adapted, query_views), query_targets).sum()  # type: ignore[arg-type]
        for t, teacher in enumerate(teachers):
            for images, labels in ((support[t], self.support_labels), (query[t], self.query_labels)):
                self.bank.add_task(teacher.class_ids, images, labels)
        self.last_support = support[-1]
        return loss

    def stacked_kd_targets(self, group: StackedTeachers, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        views = torch.stack([self.augment(batch, self.torch_rng) for batch in images])
        with torch.no_grad():
            return views, stacked.forward(group.model, group.params, views, group.buffers)  # type: ignore[arg-type]

    def kd_losses(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Each event's KD loss, (T,)."""
        return torch.stack([kd_loss(s, t, self.s["kd_quirk"]) for s, t in zip(student_logits, teacher_logits)])

    def adapt_by_kd(self, views: torch.Tensor, targets: torch.Tensor) -> Params:
        """Inner-level KD: SGD steps from theta on KD(teacher || student) over the support views,
        differentiable w.r.t. theta (second order unless `first_order`)."""
        s = self.s
        params = dict(self.model.named_parameters())
        return sgd_steps(lambda p: kd_loss(forward(self.model, p, views), targets, s["kd_quirk"]),
                         params, s["kd_inner_steps"], s["inner_lr"], s["first_order"])

    def save_recovered_grid(self) -> None:
        """The last event's recovered support set, one row per class (Fig. 7 style)."""
        if self.last_support is None:
            return
        save_task_grid(self.last_support, self.support_labels, self.ctx.artifacts_dir / "recovered_task.png",
                       self.s["support_per_class"])
