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
from dfmlbench.kernels import in_layout, task_map

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
    x = in_layout(augment(images, rng))
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
    """FIVE's inner loop: k updates, then the
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


RecoveryJob = tuple[nn.Module, nn.Module, torch.Generator]  # (generator to adapt, teacher, task's rng)


def recover_tasks(jobs: list[RecoveryJob], labels: torch.Tensor, nz: int, student: nn.Module | None,
                  augment: GeneratedImageAugment, settings: RecoverySettings,
                  meta_gradient: bool = True) -> list[RecoveredTask]:
    """`recover_task` for each (generator, teacher, rng) job, as a task axis (dfmlbench.kernels):
    FIVE's b recoveries, each adapting its own copy of the meta-generator. `student` is shared
    read-only (a module of its own, see adaptation.frozen_copy)."""
    def recover(job: RecoveryJob) -> RecoveredTask:
        generator, teacher, rng = job
        return recover_task(generator, teacher, labels, nz, student, augment, settings, rng, meta_gradient)
    return task_map(recover, jobs, labels.device)


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
