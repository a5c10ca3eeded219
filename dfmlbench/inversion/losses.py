"""Distillation and inversion losses, each with the official code's variant behind a flag.

The official FREE and BiDf-MKD pass probabilities where `F.kl_div` expects log-probabilities
(free.md D5/D6); `quirk=True` reproduces that exactly, the default is a true KL divergence.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, quirk: bool = False) -> torch.Tensor:
    """KL(teacher || student), temperature 1, mean over samples (zero iff the outputs agree).

    quirk: `F.kl_div(softmax(s), softmax(t))` with element-wise mean, as the official code
    (it maximises the teacher-student probability inner product; not a divergence).
    """
    teacher = F.softmax(teacher_logits, dim=-1)
    if quirk:  # F.kl_div(p_s, p_t, reduction="mean") written out: future torch changes "mean"
        return (torch.xlogy(teacher, teacher) - teacher * F.softmax(student_logits, dim=-1)).mean()
    return F.kl_div(F.log_softmax(student_logits, dim=-1), teacher, reduction="batchmean")


def agreement_masked_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                        quirk: bool = False) -> torch.Tensor:
    """mean_n eta_n * KL(p_t,n || p_s,n), eta_n = 1 where teacher and student argmax agree.

    The generator *subtracts* this (weighted) to push samples where the two disagree, while
    the CE term keeps them in their class. quirk: the official form
    mean_n eta_n * sum_c p_s,c (log p_s,c - p_t,c) (free.md §3.2, D5).
    """
    agree = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float()
    p_t = F.softmax(teacher_logits, dim=-1)
    if quirk:
        p_s = F.softmax(student_logits, dim=-1)
        per_sample = (torch.xlogy(p_s, p_s) - p_s * p_t).sum(-1)  # xlogy: 0 log 0 = 0, as kl_div
    else:
        per_sample = (p_t * (F.log_softmax(teacher_logits, -1) - F.log_softmax(student_logits, -1))).sum(-1)
    return (agree * per_sample).mean()


class BatchNormStatistics:
    """DeepInversion's feature-statistics term, collected while a teacher runs:
    sum over its BN layers of ||mu_batch - mu_running||_2 + ||var_batch - var_running||_2,
    with the layer *input* statistics and the biased variance.

        with BatchNormStatistics(teacher) as bn:
            logits = teacher(x)
        loss = loss + weight * bn.total()

    Only the thread that entered the block is recorded: tasks running on other threads may
    use the same teacher at the same time (dfmlbench.kernels).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.thread = threading.get_ident()
        self.terms: list[torch.Tensor] = []
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def _record(self, module: torch.nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if threading.get_ident() != self.thread:
            return
        x = inputs[0]
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
        self.terms.append(torch.linalg.vector_norm(mean - module.running_mean)
                          + torch.linalg.vector_norm(var - module.running_var))

    def __enter__(self) -> "BatchNormStatistics":
        self.handles = [m.register_forward_hook(self._record) for m in self.model.modules()
                        if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def total(self) -> torch.Tensor:
        if not self.terms:
            raise RuntimeError("no BN layer with running statistics ran inside the block")
        return torch.stack(self.terms).sum()


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """DeepInversion's TV prior: the sum of the L2 norms of the four directional pixel
    differences (horizontal, vertical and both diagonals) over the whole batch."""
    horizontal = images[..., :, :-1] - images[..., :, 1:]
    vertical = images[..., :-1, :] - images[..., 1:, :]
    diagonal = images[..., 1:, :-1] - images[..., :-1, 1:]
    antidiagonal = images[..., :-1, :-1] - images[..., 1:, 1:]
    return sum(torch.linalg.vector_norm(d) for d in (horizontal, vertical, diagonal, antidiagonal))
