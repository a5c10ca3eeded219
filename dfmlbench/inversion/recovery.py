"""Task recovery: adapt a generator (and its latent codes) to one teacher for k steps, then
take the recovered images and, for a meta-generator, the first-order meta-gradient at the
adapted parameters (free.md §3.2). Shared by FIVE and the sequential-generator ablations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from dfmlbench.inversion.augment import GeneratedImageAugment
from dfmlbench.inversion.generator import Generator
from dfmlbench.inversion.losses import BatchNormStatistics, agreement_masked_kl

StudentFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RecoverySettings:
    steps: int = 5  # k
    generator_lr: float = 1e-3
    z_lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    ce_weight: float = 1.0
    adv_weight: float = 1.0
    adv_quirk: bool = False  # D5: the official inner-product form of the adversarial term
    bn_weight: float = 0.0  # DeepInversion BN-statistics term: absent in FREE (free.md §3.2)
    recover_at: str = "k"  # D2/D3: "k" = after k updates (paper); "k-1" = official


@dataclass
class RecoveredTask:
    images: torch.Tensor  # [0, 1], detached (n, C, H, W)
    labels: torch.Tensor  # relative labels of the teacher's outputs
    meta_gradient: dict[str, torch.Tensor] | None  # dL/d(adapted generator params)
    updates: int  # generator updates taken before `images` were produced


def interleaved_targets(way: int, per_class: int, device: torch.device) -> torch.Tensor:
    """0, 1, ..., way-1 repeated `per_class` times, as the official targets."""
    return torch.arange(way, device=device).repeat(per_class)


def inversion_loss(images: torch.Tensor, labels: torch.Tensor, teacher: nn.Module,
                   student: StudentFn | None, augment: GeneratedImageAugment,
                   settings: RecoverySettings, rng: torch.Generator) -> torch.Tensor:
    """Eq. (1): CE(teacher) - adv * agreement-masked KL(teacher || detached student)
    (+ bn_weight * the BN-statistics term, off in FREE)."""
    x = augment(images, rng)
    if settings.bn_weight:
        with BatchNormStatistics(teacher) as statistics:
            teacher_logits = teacher(x)
        loss = settings.bn_weight * statistics.total()
    else:
        teacher_logits, loss = teacher(x), torch.zeros((), device=x.device)
    loss = loss + settings.ce_weight * F.cross_entropy(teacher_logits, labels)
    if student is not None and settings.adv_weight:
        with torch.no_grad():
            student_logits = student(x)
        loss = loss - settings.adv_weight * agreement_masked_kl(student_logits, teacher_logits,
                                                                settings.adv_quirk)
    return loss


def fresh_latents(generator: nn.Module, count: int, nz: int, settings: RecoverySettings,
                  rng: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.optim.Adam]:
    """New latent codes z ~ N(0, I) and one fresh Adam over the generator and z (both recoveries)."""
    dtype = next(generator.parameters()).dtype
    z = torch.randn(count, nz, generator=rng).to(device, dtype).requires_grad_()
    optimizer = torch.optim.Adam([{"params": list(generator.parameters()), "lr": settings.generator_lr},
                                  {"params": [z], "lr": settings.z_lr}], betas=settings.betas)
    return z, optimizer


def recover_task(generator: nn.Module, teacher: nn.Module, labels: torch.Tensor, nz: int,
                 student: StudentFn | None, augment: GeneratedImageAugment,
                 settings: RecoverySettings, rng: torch.Generator,
                 meta_gradient: bool = True) -> RecoveredTask:
    """Adapt `generator` in place (with fresh latent codes and a fresh Adam) for k steps."""
    z, optimizer = fresh_latents(generator, len(labels), nz, settings, rng, labels.device)

    def loss_and_grads(with_grads: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        optimizer.zero_grad(set_to_none=True)
        images = generator(z)
        loss = inversion_loss(images, labels, teacher, student, augment, settings, rng)
        loss.backward()
        grads = ({n: p.grad.detach().clone() for n, p in generator.named_parameters()}
                 if with_grads else None)
        return images.detach(), grads

    def images_only() -> torch.Tensor:
        with torch.no_grad():
            return generator(z)

    images, grads, updates = _k_step_schedule(loss_and_grads, optimizer, settings, meta_gradient, images_only)
    return RecoveredTask(images, labels, grads, updates)


Step = Callable[[bool], tuple[torch.Tensor, Any]]  # with_grads -> (images, gradients or None)


def _k_step_schedule(loss_and_grads: Step, optimizer: torch.optim.Optimizer, settings: RecoverySettings,
                     meta_gradient: bool, images_only: Callable[[], torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, Any, int]:
    """FIVE's inner loop, shared by the sequential and stacked recoveries: k updates, then the
    images (and meta-gradient) at the adapted generator; or, official (D2/D3), the images and
    gradient of the step before the last update. Returns (images, gradients, updates)."""
    official = settings.recover_at == "k-1"
    images, grads = None, None
    for step in range(settings.steps):
        last = step == settings.steps - 1
        images, step_grads = loss_and_grads(meta_gradient and official and last)
        if official and last:
            grads = step_grads
        optimizer.step()
    if official:
        return images, grads, settings.steps - 1
    if meta_gradient:
        images, grads = loss_and_grads(True)
    else:
        assert images_only is not None
        images = images_only()
    return images, grads, settings.steps


def can_recover_stacked(generator: nn.Module, teachers: list[nn.Module], settings: RecoverySettings,
                        student: nn.Module | None) -> bool:
    """FIVE's b recoveries run as one computation when the teachers are Conv4s of one shape,
    the student a batch-statistics Conv4, and no BN-statistics term is asked for (FREE's case)."""
    from dfmlbench import stacked
    shapes = {tuple((n, p.shape) for n, p in t.named_parameters()) for t in teachers}
    return (isinstance(generator, Generator) and not settings.bn_weight and len(shapes) == 1
            and all(stacked.stackable_teacher(t) for t in teachers)
            and (student is None or stacked.stackable(student)))


@dataclass
class StackedTeachers:
    """Conv4 teachers stacked for one computation, and the student each one is compared with
    (one Conv4 module with per-teacher parameters, or none)."""

    model: nn.Module
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    student: nn.Module | None = None
    student_params: dict[str, torch.Tensor] | None = None

    @classmethod
    def of(cls, teachers: list[nn.Module]) -> "StackedTeachers":
        from dfmlbench import stacked
        params, buffers = stacked.stack_modules(teachers)
        return cls(teachers[0], params, buffers)

    def with_student(self, student: nn.Module | None, params: dict[str, torch.Tensor] | None) -> "StackedTeachers":
        return StackedTeachers(self.model, self.params, self.buffers, student, params)


def stacked_inversion_losses(generator: Generator, params: dict[str, torch.Tensor], z: torch.Tensor,
                             labels: torch.Tensor, teachers: StackedTeachers, augment: GeneratedImageAugment,
                             settings: RecoverySettings, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`inversion_loss` of each stacked generator against its teacher: (images (T, B, ...), (T,))."""
    from dfmlbench import stacked
    count = z.shape[0]
    images = stacked.generate(generator, params, z)
    x = torch.stack([augment(images[t], rng) for t in range(count)])
    teacher_logits = stacked.forward(teachers.model, teachers.params, x, teachers.buffers)  # type: ignore[arg-type]
    losses = stacked.task_losses(teacher_logits, labels.expand(count, -1)) * settings.ce_weight
    if teachers.student is not None and settings.adv_weight:
        with torch.no_grad():
            student_logits = stacked.forward(teachers.student, teachers.student_params, x)  # type: ignore[arg-type]
        losses = losses - settings.adv_weight * torch.stack([
            agreement_masked_kl(student_logits[t], teacher_logits[t], settings.adv_quirk) for t in range(count)])
    return images, losses


def _stacked_optimizer(params: dict[str, torch.Tensor], z: torch.Tensor,
                       settings: RecoverySettings) -> torch.optim.Adam:
    """One Adam over stacked generators and codes = one fresh Adam per teacher (elementwise)."""
    return torch.optim.Adam([{"params": list(params.values()), "lr": settings.generator_lr},
                             {"params": [z], "lr": settings.z_lr}], betas=settings.betas)


def recover_tasks_stacked(generator: Generator, teachers: list[nn.Module], labels: torch.Tensor, nz: int,
                          student: nn.Module | None, augment: GeneratedImageAugment,
                          settings: RecoverySettings, rng: torch.Generator) -> list[RecoveredTask]:
    """`recover_task` for each teacher from a copy of `generator` (FIVE's inner loop, meta
    gradients included), all teachers at once: stacked generator copies, latent codes and
    teachers.

    The latent codes are drawn teacher by teacher as the sequential path does; augmentation
    draws come step by step (each teacher still gets its own draw), so with a random
    augmentation the two paths see different (equally distributed) crops and flips.
    `student` is the detached base meta-learner (batch-statistics BN per teacher's batch).
    """
    from dfmlbench import stacked
    count, device = len(teachers), labels.device
    params = {n: p.detach().unsqueeze(0).repeat(count, *[1] * p.dim()).requires_grad_()
              for n, p in generator.named_parameters()}
    dtype = next(generator.parameters()).dtype
    z = torch.stack([torch.randn(len(labels), nz, generator=rng) for _ in teachers]).to(device, dtype).requires_grad_()
    optimizer = _stacked_optimizer(params, z, settings)
    student_params = (stacked.stack({n: p.detach() for n, p in student.named_parameters()}, count)
                      if student is not None else None)
    stacked_teachers = StackedTeachers.of(teachers).with_student(student, student_params)

    def loss_and_grads(with_grads: bool) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        optimizer.zero_grad(set_to_none=True)
        images, losses = stacked_inversion_losses(generator, params, z, labels, stacked_teachers,
                                                  augment, settings, rng)
        losses.sum().backward()
        grads = [p.grad.detach().clone() for p in params.values()] if with_grads else None
        return images.detach(), grads

    images, grads, updates = _k_step_schedule(loss_and_grads, optimizer, settings, meta_gradient=True)
    names = list(params)
    return [RecoveredTask(images[t], labels, {n: g[t] for n, g in zip(names, grads)}, updates)
            for t in range(count)]


def recover_lowest_loss_stacked(generator: Generator, params: dict[str, torch.Tensor], z: torch.Tensor,
                                labels: torch.Tensor, teachers: StackedTeachers, augment: GeneratedImageAugment,
                                settings: RecoverySettings, rng: torch.Generator) -> torch.Tensor:
    """`recover_lowest_loss` for several teachers at once, from given generator parameters and
    codes (T, ...): each teacher's batch of lowest loss, detached, (T, B, C, H, W)."""
    params = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    z = z.detach().clone().requires_grad_()
    optimizer = _stacked_optimizer(params, z, settings)
    best_loss = torch.full((z.shape[0],), float("inf"), device=z.device)
    best_images: torch.Tensor | None = None
    for _ in range(settings.steps):
        optimizer.zero_grad(set_to_none=True)
        images, losses = stacked_inversion_losses(generator, params, z, labels, teachers, augment, settings, rng)
        better = losses.detach() < best_loss
        best_loss = torch.where(better, losses.detach(), best_loss)
        candidates = images.detach()
        best_images = candidates if best_images is None else torch.where(
            better.view(-1, *[1] * (candidates.dim() - 1)), candidates, best_images)
        losses.sum().backward()
        optimizer.step()
    assert best_images is not None, "recovery needs at least one step"
    return best_images


def recover_lowest_loss(generator: nn.Module, teacher: nn.Module, labels: torch.Tensor, nz: int,
                        student: StudentFn | None, augment: GeneratedImageAugment,
                        settings: RecoverySettings, rng: torch.Generator) -> torch.Tensor:
    """BiDf-MKD's recovery: train `generator` (and fresh latent codes) for `settings.steps`
    iterations on the inversion loss and return the batch of lowest loss, detached, in [0, 1]."""
    z, optimizer = fresh_latents(generator, len(labels), nz, settings, rng, labels.device)
    best_loss, best_images = float("inf"), None
    for _ in range(settings.steps):
        optimizer.zero_grad(set_to_none=True)
        images = generator(z)
        loss = inversion_loss(images, labels, teacher, student, augment, settings, rng)
        if float(loss.detach()) < best_loss:
            best_loss, best_images = float(loss.detach()), images.detach()
        loss.backward()
        optimizer.step()
    assert best_images is not None, "recovery needs at least one step"
    return best_images
