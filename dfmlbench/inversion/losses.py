"""Distillation and inversion losses, each with the official code's variant behind a flag.

The official FREE and BiDf-MKD pass probabilities where `F.kl_div` expects log-probabilities
(free.md D5/D6); `quirk=True` reproduces that exactly, the default is a true KL divergence.
"""

from __future__ import annotations

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
        per_sample = (p_s * (torch.log(p_s) - p_t)).sum(-1)
    else:
        per_sample = (p_t * (F.log_softmax(teacher_logits, -1) - F.log_softmax(student_logits, -1))).sum(-1)
    return (agree * per_sample).mean()
