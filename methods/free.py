"""FREE (Wei et al., CVPR 2024): a meta-generator (FIVE) recovers one task per teacher in k
steps, a meta-learner learns from the recovered tasks with BELL, and cross-task replay runs
MAML on tasks drawn from the memory bank (free.md §3-§5). The ablations of Table 5 are the
same algorithm with `generator` and `learner` switched (free.md §7)."""

from __future__ import annotations

import copy
import itertools
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from dfmlbench.adaptation import frozen_copy
from dfmlbench.checkpoint import numpy_rng_state, set_numpy_rng_state
from dfmlbench.inversion.augment import GeneratedImageAugment
from dfmlbench.inversion.bank import MemoryBank
from dfmlbench.inversion.grid import save_task_grid
from dfmlbench.inversion.generator import Generator
from dfmlbench.inversion.losses import kd_loss
from dfmlbench.inversion.recovery import (RecoveredTask, RecoverySettings, interleaved_targets, recover_task,
                                         recover_tasks)
from dfmlbench.kernels import in_layout, task_generators
from dfmlbench.learner import Learner
from dfmlbench.maml import ReplaySettings, replay
from dfmlbench.method import Method, RecoveryUnit, RunContext
from dfmlbench.methods import Variant, register
from dfmlbench.selection import ModelSelection
from dfmlbench.pool import Teacher, TeacherPool
from dfmlbench.schema import choice, integer, optional

# The official code's behaviour for every deviation switch (free.md §9), for `fidelity: official`.
OFFICIAL = {
    "bank_add": "last",  # D1
    "recover_at": "k-1",  # D2, D3
    "adv_quirk": True,  # D5
    "kd_quirk": True,  # D6
    "teacher_select": "final",  # P3: the official teachers carry their last epoch's weights
}
CHOICES = {
    "generator": ("meta", "sequential"), "learner": ("bell", "erm", "none"),
    "bank_add": ("all", "last"), "recover_at": ("k", "k-1"),
    "gen_outer_opt": ("fresh_adam", "persistent_adam", "sgd"), "bell_inner": ("adam", "sgd"),
    "bell_outer": ("adam_pseudograd", "interpolate"), "bell_outer_opt": ("shared", "separate"),
    "aug_granularity": ("batch", "sample"),
    "fidelity": ("harness", "official"),
}


@register("free", "FREE_5: meta-generator (FIVE, k=5) + BELL + cross-task replay", "FREE_5", {
    "free-2": Variant({"k": 2}, "FREE_2: FREE with k=2 generator steps", "FREE_2"),
    "free-baseline": Variant({"generator": "sequential", "learner": "none"},
                             "Table 5 Baseline: sequential generator, replay only", "Baseline"),
    "free-erm": Variant({"generator": "meta", "learner": "erm"},
                        "Table 5 ERM: meta-generator, one step on the mean KD loss", "ERM"),
    "free-sequence": Variant({"generator": "sequential", "learner": "bell"},
                             "Table 5 Sequence: sequential generator + BELL", "Sequence"),
    "free-official": Variant({"fidelity": "official"},
                             "FREE with the official code's behaviour at every deviation switch (D1-D6, "
                             "last-epoch teachers; D9 leaks test data and is not reproduced)"),
})
class Free(Method):
    paper_budget = {"epochs": 980, "warmup_epochs": 19}
    choices = CHOICES
    added_settings = {"bell_outer": "adam_pseudograd", "bell_epsilon": 1e-3, "teacher_select": None}
    rules = {"warmup_epochs": integer(0), "checkpoint_interval": integer(0),
             "replay_max_metabatches": optional(integer(1)), "teacher_select": optional(choice(("best", "final")))}
    smoke_settings = {"epochs": 2, "warmup_epochs": 1, "teachers_per_epoch": 2, "images_per_class": 4, "nz": 16,
                      "ngf": 8, "k": 2, "replay_query": 3, "replay_episode_batch": 2, "replay_max_metabatches": 1,
                      "val_interval": 1}
    defaults: dict[str, Any] = {
        "generator": "meta",  # meta (FIVE) | sequential (Baseline/Sequence ablations)
        "learner": "bell",  # bell | erm | none (Baseline: replay only)
        "k": 5,  # generator inner steps (FREE_5; FREE_2 uses 2)
        "epochs": 980,  # post-warmup epochs (official: 1..999 with 19 warmup, D17)
        "warmup_epochs": 19,  # CE-only recovery, nothing stored (D24)
        "teachers_per_epoch": 4,  # b, drawn uniformly with replacement
        "images_per_class": 20,  # per teacher: 100 images for 5 classes
        "nz": 256,
        "ngf": 64,
        "generator_lr": 1e-3,
        "z_lr": 1e-3,
        "adv_weight": 1.0,
        "bn_weight": 0.0,  # DeepInversion BN-statistics term (absent in FREE; for experiments)
        "outer_lr": 1e-3,  # the meta-learner's shared Adam (BELL outer step and replay)
        "bell_inner_lr": 1e-3,
        "reptile_scale": 67.0,  # D8: theta.grad = 67 (theta - theta~)
        "replay_query": 15,
        "replay_inner_steps": 5,
        "replay_inner_lr": 0.01,
        "replay_episode_batch": 10,
        "replay_patience": 10,
        "replay_max_metabatches": None,  # D22: cap for CPU budgets
        "replay_first_order": False,
        "bank_slots": 20,
        "val_interval": 20,
        "checkpoint_interval": 10,  # epochs between checkpoints (also every runtime.checkpoint_minutes; 0: only those)
        # Deviation switches (docs/deviations.md), harness defaults:
        "bank_add": "all",  # D1
        "recover_at": "k",  # D2/D3
        "gen_outer_opt": "fresh_adam",  # D4
        "adv_quirk": False,  # D5
        "kd_quirk": False,  # D6
        "bell_inner": "adam",  # D7
        "bell_outer": "adam_pseudograd",  # D8: official; "interpolate" is the paper's theta + eps (theta~ - theta)
        "bell_epsilon": 1e-3,  # the paper's eps, read only by bell_outer: interpolate
        "bell_outer_opt": "shared",  # D8
        "aug_granularity": "batch",
        "teacher_select": None,  # P3: pool.select for this method's cells ("final" official); null: the suite's
        "fidelity": "harness",  # "official" switches D1, D2/D3, D5, D6 to the official code
    }

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        if self.settings["fidelity"] == "official":  # explicit user settings still win
            self.settings.update({k: v for k, v in OFFICIAL.items() if k not in settings})

    def pool_settings(self) -> dict[str, Any]:
        return {} if self.settings["teacher_select"] is None else {"select": self.settings["teacher_select"]}

    def fit(self, pool: TeacherPool | None, ctx: RunContext) -> Learner:
        assert pool is not None
        training, first = ctx.checkpoints.resume(lambda: FreeTraining(self.settings, pool, ctx), "epoch")
        return training.run(first)


    def recovery_unit(self, pool: TeacherPool, ctx: RunContext) -> RecoveryUnit:
        """One post-warmup epoch's recoveries: b teachers drawn as an epoch draws them."""
        training = FreeTraining(self.settings, pool, ctx)
        return RecoveryUnit("epoch", self.settings["epochs"],
                            lambda: training.recover(training.draw_teachers(), warmup=False))


class FreeTraining:
    """One FREE run: the state (meta-learner, meta-generator, bank, optimisers) and its epochs."""

    def __init__(self, settings: dict[str, Any], pool: TeacherPool, ctx: RunContext) -> None:
        self.s, self.pool, self.ctx = settings, pool, ctx
        self.device = ctx.device
        self.model = ctx.build_learner_model()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings["outer_lr"])
        self.bell_optimizer = (self.optimizer if settings["bell_outer_opt"] == "shared"
                               else torch.optim.Adam(self.model.parameters(), lr=settings["outer_lr"]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=ctx.generator("generator-init"))))
            self.generator = Generator(settings["nz"], settings["ngf"], pool.image_size,
                                       pool.in_channels).to(self.device)
        self.generator_optimizer = self._generator_optimizer()
        self.augment = GeneratedImageAugment(pool.mean, pool.std, granularity=settings["aug_granularity"])
        self.bank = MemoryBank(settings["bank_slots"])
        self.rng = np.random.default_rng(ctx.generator("free-numpy").initial_seed())
        self.torch_rng = ctx.generator("free-torch")
        self.recovery = RecoverySettings(settings["k"], settings["generator_lr"], settings["z_lr"],
                                         adv_weight=settings["adv_weight"], adv_quirk=settings["adv_quirk"],
                                         bn_weight=settings["bn_weight"],
                                         recover_at=settings["recover_at"])
        self.replay_settings = ReplaySettings.from_settings(settings, ctx.way, ctx.shot)
        self.labels = interleaved_targets(ctx.way, settings["images_per_class"], self.device)
        self.selection = ModelSelection(ctx, self.model, settings["val_interval"], settings["epochs"])

    def _generator_optimizer(self) -> torch.optim.Optimizer:
        params = self.generator.parameters()
        if self.s["gen_outer_opt"] == "sgd":
            return torch.optim.SGD(params, lr=self.s["generator_lr"])
        return torch.optim.Adam(params, lr=self.s["generator_lr"], betas=(0.5, 0.999))

    # -- one epoch --------------------------------------------------------------------------

    def run(self, first: int = 1) -> Learner:
        """Epochs `first`.. to the end (after `ctx.checkpoints.resume`, from where a checkpoint left off)."""
        s, ctx = self.s, self.ctx
        total = s["warmup_epochs"] + s["epochs"]
        with ctx.progress(total, "free epochs") as bar:
            bar.update(first - 1)
            for epoch in range(first, total + 1):
                warmup = epoch <= s["warmup_epochs"]
                teachers = self.draw_teachers()
                tasks = self.recover(teachers, warmup)
                if not warmup:
                    self.store(teachers, tasks)
                    self.learn_from_tasks(teachers, tasks, epoch)
                    stats = replay(self.model, self.optimizer, self.bank, self.augment.normalize,
                                   self.replay_settings, self.rng, self.device)
                    ctx.log("replay_tasks", stats.tasks, epoch)
                    if self.selection.due(epoch - s["warmup_epochs"]):
                        self.selection.observe(epoch)
                ctx.checkpoints.after(epoch, total, self, every=s["checkpoint_interval"])
                bar.update(1)
        ctx.checkpoints.finish()
        self.save_recovered_grid(tasks)
        ctx.info.update(bank_images=len(self.bank), bank_classes=len(self.bank.ready_classes))
        return self.selection.finish("FREE")

    def draw_teachers(self) -> list[Teacher]:
        """An epoch's b teachers, drawn uniformly with replacement."""
        return [self.pool[int(i)] for i in self.rng.integers(0, len(self.pool), self.s["teachers_per_epoch"])]

    # -- resumable state (dfmlbench.checkpoint) -------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything the next epochs depend on, RNG states included."""
        return {
            "selection": self.selection.state_dict(), "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "bell_optimizer": self.bell_optimizer.state_dict(),
            "generator": self.generator.state_dict(),
            "generator_optimizer": self.generator_optimizer.state_dict(),
            "bank": self.bank.state_dict(), "torch_rng": self.torch_rng.get_state(),
            "numpy_rng": numpy_rng_state(self.rng),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.bell_optimizer is not self.optimizer:
            self.bell_optimizer.load_state_dict(state["bell_optimizer"])
        self.generator.load_state_dict(state["generator"])
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.bank.load_state_dict(state["bank"])
        self.torch_rng.set_state(state["torch_rng"])
        set_numpy_rng_state(self.rng, state["numpy_rng"])
        self.selection.load_state_dict(state["selection"])

    def recover(self, teachers: list[Teacher], warmup: bool) -> list[RecoveredTask]:
        """FIVE (meta: each teacher adapts its own copy of the meta-generator, a task axis) or the
        sequential generator (each teacher continues from the last); only this is the paper's
        Time column. The student is the base meta-learner theta, detached (D9: never an adapted
        copy); each recovery draws from its own generator (kernels.task_generators)."""
        student = None if warmup else frozen_copy(self.model)
        rngs = task_generators(self.torch_rng, len(teachers))
        meta = self.s["generator"] == "meta"
        with self.ctx.recovery() if not warmup else nullcontext():  # warmup is not timed
            if meta:
                jobs = [(copy.deepcopy(self.generator), t.model, rng) for t, rng in zip(teachers, rngs)]
                tasks = recover_tasks(jobs, self.labels, self.s["nz"], student, self.augment, self.recovery)
            else:
                tasks = [recover_task(self.generator, t.model, self.labels, self.s["nz"], student, self.augment,
                                      self.recovery, rng, meta_gradient=False) for t, rng in zip(teachers, rngs)]
        if meta:
            self.meta_update([task.meta_gradient for task in tasks])
        return tasks

    def meta_update(self, gradients: list[dict[str, torch.Tensor]]) -> None:
        """theta_G <- step of (1/b) sum_i g_i, g_i taken at teacher i's adapted generator (Eq. 2)."""
        if self.s["gen_outer_opt"] == "fresh_adam":  # D4: the official code builds it every epoch
            self.generator_optimizer = self._generator_optimizer()
        self.generator_optimizer.zero_grad(set_to_none=True)
        for name, param in self.generator.named_parameters():
            param.grad = torch.stack([g[name] for g in gradients]).mean(0)
        self.generator_optimizer.step()

    def store(self, teachers: list[Teacher], tasks: list[RecoveredTask]) -> None:
        """Recovered images enter the bank under absolute class ids (D1: all b tasks, or the last)."""
        chosen = list(zip(teachers, tasks))
        if self.s["bank_add"] == "last":
            chosen = chosen[-1:]
        for teacher, task in chosen:
            self.bank.add_task(teacher.class_ids, task.images, task.labels)

    def learn_from_tasks(self, teachers: list[Teacher], tasks: list[RecoveredTask], epoch: int) -> None:
        """BELL (sequential KD on a clone, Reptile-style outer step) or ERM (one step on the mean)."""
        if self.s["learner"] == "none":
            return
        # One augmentation draw for all b tasks, as the official code (main.py:246).
        views = [in_layout(v) for v in self.augment(torch.stack([t.images for t in tasks]), self.torch_rng)]
        with torch.no_grad():
            targets = [t.model(v) for t, v in zip(teachers, views)]
        self.ctx.log("grad_inner_product", self.gradient_inner_product(views, targets), epoch)
        if self.s["learner"] == "erm":
            self.bell_optimizer.zero_grad(set_to_none=True)
            loss = torch.stack([kd_loss(self.model(v), t, self.s["kd_quirk"]) for v, t in zip(views, targets)]).mean()
            loss.backward()
            self.bell_optimizer.step()
            return
        clone = copy.deepcopy(self.model)
        inner = (torch.optim.Adam(clone.parameters(), lr=self.s["bell_inner_lr"]) if self.s["bell_inner"] == "adam"
                 else torch.optim.SGD(clone.parameters(), lr=self.s["bell_inner_lr"]))
        for view, target in zip(views, targets):  # the i-th gradient after i-1 updates
            inner.zero_grad(set_to_none=True)
            kd_loss(clone(view), target, self.s["kd_quirk"]).backward()
            inner.step()
        if self.s["bell_outer"] == "interpolate":  # the paper's literal outer step, no optimiser
            with torch.no_grad():
                for param, adapted in zip(self.model.parameters(), clone.parameters()):
                    param.add_(adapted - param, alpha=self.s["bell_epsilon"])
            return
        self.bell_optimizer.zero_grad(set_to_none=True)
        for param, adapted in zip(self.model.parameters(), clone.parameters()):
            param.grad = self.s["reptile_scale"] * (param.detach() - adapted.detach())
        self.bell_optimizer.step()

    def gradient_inner_product(self, views: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
        """Mean pairwise <grad KD_i, grad KD_j> at theta over the b tasks (Fig. 5)."""
        params = [p for p in self.model.parameters()]
        flat = []
        for view, target in zip(views, targets):
            grads = torch.autograd.grad(kd_loss(self.model(view), target, self.s["kd_quirk"]), params)
            flat.append(torch.cat([g.flatten() for g in grads]))
        pairs = list(itertools.combinations(range(len(flat)), 2))
        return float(np.mean([float(flat[i] @ flat[j]) for i, j in pairs])) if pairs else 0.0

    def save_recovered_grid(self, tasks: list[RecoveredTask]) -> None:
        """The last epoch's first recovered task, one row per class (Fig. 7)."""
        task = tasks[0]
        save_task_grid(task.images, task.labels, self.ctx.artifacts_dir / "recovered_task.png",
                       self.s["images_per_class"])
