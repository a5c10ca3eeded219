"""BiDf-MKD (Hu et al., ICML 2023), white-box, as baselines.md §2.7 describes it.

Each generation event takes one teacher: a freshly reset generator recovers a support set
(CE only), the meta-learner adapts to it by KD for 10 second-order steps, a reset generator
recovers a boundary query set where the teacher and the *adapted* student disagree, and the
outer KD loss on that query is one episode of the meta-batch. Both sets enter the memory bank;
every other episode is MAML replay on bank tasks. Recovery time = the two recoveries only."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from dfmlbench.adaptation import Params, forward, frozen_copy, sgd_steps
from dfmlbench.checkpoint import numpy_rng_state, set_numpy_rng_state
from dfmlbench.inversion.augment import GeneratedImageAugment
from dfmlbench.inversion.bank import MemoryBank
from dfmlbench.inversion.grid import save_task_grid
from dfmlbench.inversion.generator import Generator, reset_generator
from dfmlbench.inversion.losses import kd_loss
from dfmlbench.inversion.recovery import RecoverySettings, interleaved_targets, recover_lowest_loss
from dfmlbench.kernels import PerThread, in_layout, task_generators, task_map
from dfmlbench.learner import Learner
from dfmlbench.maml import (PlateauTrigger, ReplaySettings, add_gradients, bank_episodes, maml_meta_gradient,
                            summed_per_parameter)
from dfmlbench.method import Method, RecoveryUnit, RunContext
from dfmlbench.methods import register
from dfmlbench.pool import Teacher, TeacherPool
from dfmlbench.schema import integer
from dfmlbench.selection import ModelSelection

CHOICES = {"event_rule": ("periodic", "plateau"), "aug_granularity": ("batch", "sample")}


@register("bidf-mkd", "BiDf-MKD (white-box): per-event generator, inner KD, boundary query, outer KD, "
          "replay", "BiDf-MKD")
class BiDfMKD(Method):
    paper_budget = {"meta_iterations": 60000, "adv_start": 4000}
    choices = CHOICES
    rules = {"adv_start": integer(0)}
    smoke_settings = {"meta_iterations": 12, "adv_start": 6, "episode_batch": 2, "generate_interval": 6,
                      "support_per_class": 3, "query_per_class": 3, "generator_iterations": 3, "nz": 16, "ngf": 8,
                      "kd_inner_steps": 2, "replay_inner_steps": 2, "replay_query": 3, "val_interval": 6}
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
        "replay_inner_steps": 5,  # inner_update_num
        "kd_inner_lr": 0.01,  # inner_lr: the official code has one for both inner loops
        "replay_inner_lr": 0.01,
        "outer_lr": 1e-3,
        "kd_first_order": False,  # second order in both inner loops, as the official code
        "replay_first_order": False,
        "replay_query": 15,
        "adv_weight": 1.0,
        "adv_start": 4000,  # meta-iterations before the boundary query uses the adapted student
        "adv_quirk": False,  # the official inner-product form of the adversarial term (as FREE D5)
        "kd_quirk": False,  # the official softmax-as-log-prob KD (as FREE D6)
        "bank_slots": 20,  # max_batch_per_class
        "aug_granularity": "batch",
        "val_interval": 500,  # meta-iterations: the official val_interval 2000 counts episodes (BD6)
    }

    def fit(self, pool: TeacherPool | None, ctx: RunContext) -> Learner:
        assert pool is not None
        training, first = ctx.checkpoints.resume(lambda: BiDfTraining(self.settings, pool, ctx), "meta_iteration")
        return training.run(first)

    def recovery_unit(self, pool: TeacherPool, ctx: RunContext) -> RecoveryUnit:
        """One generation event (support and boundary query recovered for a random teacher);
        every `generate_interval` meta-iterations run `episode_batch` of them."""
        training, s = BiDfTraining(self.settings, pool, ctx), self.settings
        rng = np.random.default_rng(0)
        events = math.ceil(s["meta_iterations"] / s["generate_interval"]) * s["episode_batch"]
        return RecoveryUnit("event", events,
                            lambda: training.generation_events([pool[int(rng.integers(len(pool)))]], boundary=True))


Event = tuple[Teacher, torch.Generator]  # a generation event's teacher and its own random numbers


class BiDfTraining:
    def __init__(self, settings: dict[str, Any], pool: TeacherPool, ctx: RunContext) -> None:
        self.s, self.pool, self.ctx = settings, pool, ctx
        self.device = ctx.device
        self.model = ctx.build_learner_model()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings["outer_lr"])
        self.generator = Generator(settings["nz"], settings["ngf"], pool.image_size, pool.in_channels).to(self.device)
        self.augment = GeneratedImageAugment(pool.mean, pool.std, granularity=settings["aug_granularity"])
        self.bank = MemoryBank(settings["bank_slots"])
        self.rng = np.random.default_rng(ctx.generator("bidf-numpy").initial_seed())
        self.torch_rng = ctx.generator("bidf-torch")
        self.replay_settings = ReplaySettings.from_settings(settings, ctx.way, ctx.shot,
                                                            episode_batch=settings["episode_batch"])
        self.support_labels = interleaved_targets(ctx.way, settings["support_per_class"], self.device)
        self.query_labels = interleaved_targets(ctx.way, settings["query_per_class"], self.device)
        self.selection = ModelSelection(ctx, self.model, settings["val_interval"], settings["meta_iterations"])
        self.events = 0
        self.last_support: torch.Tensor | None = None
        self.plateau = PlateauTrigger(settings["generate_interval"])
        self.event_pending = True  # an event at the start, under either rule

    def run(self, first: int = 1) -> Learner:
        """Meta-iterations `first`.. to the end (after `ctx.checkpoints.resume`, from a checkpoint's)."""
        s, ctx = self.s, self.ctx
        with ctx.progress(s["meta_iterations"], "bidf-mkd meta-iterations") as bar:
            bar.update(first - 1)
            for iteration in range(first, s["meta_iterations"] + 1):
                pending = self.event_pending
                if s["event_rule"] == "periodic":
                    pending = pending or (iteration - 1) % s["generate_interval"] == 0
                events = self.event_slots(pending)
                accuracy = self.meta_iteration(iteration, events)
                if events:
                    pending = False  # an event ran: the trigger is served
                elif s["event_rule"] == "plateau":
                    pending = self.plateau.stalled(accuracy)
                self.event_pending = pending
                if self.selection.due(iteration):
                    self.selection.observe(iteration)
                ctx.checkpoints.after(iteration, s["meta_iterations"], self)
                bar.update(1)
        ctx.checkpoints.finish()
        ctx.info.update(generation_events=self.events, bank_images=len(self.bank),
                        bank_classes=len(self.bank.ready_classes))
        self.save_recovered_grid()
        return self.selection.finish("BiDf-MKD")

    def state(self) -> dict[str, Any]:
        """Everything the next meta-iterations depend on (dfmlbench.checkpoint)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.state_dict(), "bank": self.bank.state_dict(),
                "numpy_rng": numpy_rng_state(self.rng), "torch_rng": self.torch_rng.get_state(),
                "selection": self.selection.state_dict(), "plateau": self.plateau.state_dict(),
                "event_pending": self.event_pending, "events": self.events,
                "last_support": [] if self.last_support is None else [self.last_support]}

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.load_state_dict(state["generator"])
        self.bank.load_state_dict(state["bank"])
        set_numpy_rng_state(self.rng, state["numpy_rng"])
        self.torch_rng.set_state(state["torch_rng"])
        self.selection.load_state_dict(state["selection"])
        self.plateau.load_state_dict(state["plateau"])
        self.event_pending, self.events = state["event_pending"], state["events"]
        self.last_support = state["last_support"][0] if state["last_support"] else None

    def bank_ready(self) -> bool:
        return len(self.bank.classes_with(self.ctx.shot + self.s["replay_query"])) >= self.ctx.way

    def event_slots(self, triggered: bool) -> int:
        """How many of the meta-batch's `episode_batch` slots are generation events, the rest
        replay: every slot while the bank cannot form a task; when an event is due, every slot
        under the periodic rule (TDS) and one under the plateau rule (mainKD, BD2); else none."""
        if not self.bank_ready():
            return self.s["episode_batch"]
        if not triggered:
            return 0
        return self.s["episode_batch"] if self.s["event_rule"] == "periodic" else 1

    def meta_iteration(self, iteration: int, events: int) -> float:
        """`episode_batch` episode losses summed into one Adam step: `events` generation events
        (one teacher each), then MAML replay in the other slots. Returns the replay train
        accuracy (nan when every slot was an event)."""
        self.optimizer.zero_grad(set_to_none=True)
        accuracies: list[float] = []
        if events:
            teachers = [self.pool[int(self.rng.integers(len(self.pool)))] for _ in range(events)]
            add_gradients(self.model, self.generation_events(teachers, boundary=iteration > self.s["adv_start"]))
        if events < self.s["episode_batch"]:
            tasks = [self.bank.sample_task(self.ctx.way, self.ctx.shot, self.s["replay_query"], self.rng)
                     for _ in range(self.s["episode_batch"] - events)]
            episodes = bank_episodes(tasks, self.augment.normalize, self.device)
            gradients, accuracies = maml_meta_gradient(self.model, episodes, self.replay_settings)
            add_gradients(self.model, gradients)
        self.optimizer.step()
        accuracy = float(np.mean(accuracies)) if accuracies else float("nan")
        if accuracies:
            self.ctx.log("replay_accuracy", accuracy, iteration)
        return accuracy

    def recovery_settings(self, adv_weight: float) -> RecoverySettings:
        return RecoverySettings(self.s["generator_iterations"], self.s["generator_lr"], self.s["generator_lr"],
                                adv_weight=adv_weight, adv_quirk=self.s["adv_quirk"])

    def recover(self, events: list[Event], labels: torch.Tensor, students: list[nn.Module | None],
                adv_weight: float) -> list[torch.Tensor]:
        """Each event's freshly reset generator trained on its teacher (against its student): the
        timed part (the Time column), over the events as a task axis."""
        settings = self.recovery_settings(adv_weight)

        def recover_one(job: tuple[Event, nn.Module | None]) -> torch.Tensor:
            (teacher, rng), student = job
            generator = copy.deepcopy(self.generator)
            reset_generator(generator, rng)
            return recover_lowest_loss(generator, teacher.model, labels, self.s["nz"], student, self.augment,
                                       settings, rng)
        with self.ctx.recovery():
            return task_map(recover_one, list(zip(events, students)), self.device)

    def kd_targets(self, teacher: Teacher, images: torch.Tensor, rng: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        views = in_layout(self.augment(images, rng))
        with torch.no_grad():
            return views, teacher.model(views)

    def generation_events(self, teachers: list[Teacher], boundary: bool) -> list[torch.Tensor]:
        """Support recovery, inner KD, boundary-query recovery and outer KD for each teacher (an
        event each, with its own generator, `task_generators`), as a task axis in four phases so
        that only the recoveries are timed. Returns the gradient of the summed outer KD losses
        w.r.t. the meta-learner's parameters (one tensor per parameter); both recovered sets of
        every event enter the bank."""
        s = self.s
        self.events += len(teachers)
        events = list(zip(teachers, task_generators(self.torch_rng, len(teachers))))
        params = dict(self.model.named_parameters())
        modules = PerThread(lambda: copy.deepcopy(self.model))  # structure only: the parameters are `params`
        supports = self.recover(events, self.support_labels, [None] * len(events), 0.0)

        def adapt(job: tuple[Event, torch.Tensor]) -> Params:
            (teacher, rng), support = job
            views, targets = self.kd_targets(teacher, support, rng)
            return self.adapt_by_kd(modules.get(), params, views, targets)
        adapted = task_map(adapt, list(zip(events, supports)), self.device)
        students = [frozen_copy(self.model, a) if boundary else None for a in adapted]
        queries = self.recover(events, self.query_labels, students, s["adv_weight"] if boundary else 0.0)

        def outer_gradient(job: tuple[Event, torch.Tensor, Params]) -> tuple[torch.Tensor, ...]:
            (teacher, rng), query, own = job
            views, targets = self.kd_targets(teacher, query, rng)
            loss = kd_loss(forward(modules.get(), own, views), targets, s["kd_quirk"])
            return torch.autograd.grad(loss, list(params.values()))
        gradients = task_map(outer_gradient, list(zip(events, queries, adapted)), self.device)
        for teacher, support, query in zip(teachers, supports, queries):
            for images, labels in ((support, self.support_labels), (query, self.query_labels)):
                self.bank.add_task(teacher.class_ids, images, labels)
        self.last_support = supports[-1]
        return summed_per_parameter(gradients)

    def adapt_by_kd(self, model: nn.Module, params: Params, views: torch.Tensor, targets: torch.Tensor) -> Params:
        """Inner-level KD: SGD steps from theta on KD(teacher || student) over the support views,
        differentiable w.r.t. theta (second order unless `kd_first_order`)."""
        s = self.s
        return sgd_steps(lambda p: kd_loss(forward(model, p, views), targets, s["kd_quirk"]),
                         params, s["kd_inner_steps"], s["kd_inner_lr"], s["kd_first_order"])

    def save_recovered_grid(self) -> None:
        """The last event's recovered support set, one row per class (Fig. 7 style)."""
        if self.last_support is None:
            return
        save_task_grid(self.last_support, self.support_labels, self.ctx.artifacts_dir / "recovered_task.png",
                       self.s["support_per_class"])
