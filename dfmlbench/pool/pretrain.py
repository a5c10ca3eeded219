"""Pre-training one teacher on an N-way task of meta-train classes (free.md §1)."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfmlbench.data.base import ImageDataset
from dfmlbench.models import build_model

TRAIN_FRACTION = 0.8  # the official `data[:int(0.8 * n)]`: the first 80% train, the rest held out


@dataclass(frozen=True)
class PretrainSettings:
    """The official protocol: Adam 0.01 (Conv4) or SGD 0.01 momentum 0.9 wd 5e-4 (ResNets),
    batch 128, gradient-norm clip 50, step decay x0.2, keep the best held-out epoch."""

    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.01
    clip: float = 50.0
    select: str = "best"  # "best": deep copy of the best epoch; "final": official aliasing quirk


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes (unlike hash())."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def teacher_classes(train_classes: list[int], way: int, seed: int, index: int) -> list[int]:
    """Teacher `index`'s classes: `way` distinct meta-train classes, its own draw, so teacher i
    is the same whatever the pool size. Different teachers may share classes."""
    rng = np.random.default_rng([seed, index])
    return [int(c) for c in rng.choice(np.asarray(train_classes), size=way, replace=False)]


def split_train_heldout(dataset: ImageDataset, class_ids: list[int]
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The first int(0.8 n) of each class's n images (fixed order) train, the rest are held out
    (the official split: CUB's 41 images give 32/9).
    Labels are relative: position of the class in `class_ids`."""
    train_idx, train_y, held_idx, held_y = [], [], [], []
    for label, class_id in enumerate(class_ids):
        images = dataset.indices_of(class_id)
        cut = min(len(images) - 1, int(len(images) * TRAIN_FRACTION))  # at least one held out
        train_idx.append(images[:cut]); train_y.append(np.full(cut, label))
        held_idx.append(images[cut:]); held_y.append(np.full(len(images) - cut, label))
    return tuple(np.concatenate(a) for a in (train_idx, train_y, held_idx, held_y))  # type: ignore[return-value]


def _optimizer(model: nn.Module, arch: str, settings: PretrainSettings):
    if arch.startswith("conv4"):
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
        milestones = [70]
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9,
                                    weight_decay=5e-4)
        milestones = [30, 50, 80]
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.2)


@torch.no_grad()
def heldout_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Top-1 % in eval mode (BN running statistics), as the official pretraining measures it."""
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
                  for i in range(0, len(x), batch))
    return 100.0 * correct / len(x)


@dataclass
class TrainedTeacher:
    state: dict[str, torch.Tensor]
    heldout_acc: float
    best_epoch: int
    steps: int  # optimiser steps that produced `state` (to the best epoch, or all for "final")


def pretrain_teacher(dataset: ImageDataset, class_ids: list[int], arch: str,
                     settings: PretrainSettings, seed: int,
                     device: torch.device | str = "cpu") -> TrainedTeacher:
    return pretrain_teacher_both(dataset, class_ids, arch, settings, seed, device)[settings.select]


def pretrain_teacher_both(dataset: ImageDataset, class_ids: list[int], arch: str,
                          settings: PretrainSettings, seed: int,
                          device: torch.device | str = "cpu") -> dict[str, TrainedTeacher]:
    """One training run, kept both ways: "best" (the best held-out epoch's weights) and
    "final" (the last epoch's). `settings.select` does not change the training, so one run
    gives both pools' teacher (a suite that uses both builds it once)."""
    generator = torch.Generator().manual_seed(seed)
    model = build_model(arch, len(class_ids), dataset.image_size, dataset.channels,
                        generator=generator).to(device)
    train_idx, train_y, held_idx, held_y = split_train_heldout(dataset, class_ids)
    x = dataset.normalize(dataset.images[torch.from_numpy(train_idx)], device)
    y = torch.from_numpy(train_y).to(device)
    x_held = dataset.normalize(dataset.images[torch.from_numpy(held_idx)], device)
    y_held = torch.from_numpy(held_y).to(device)
    optimizer, scheduler = _optimizer(model, arch, settings)

    best_acc, best_epoch, best_state, steps, best_steps = -1.0, -1, None, 0, 0
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator).to(device)
        for start in range(0, len(x), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            nn.utils.clip_grad_norm_(model.parameters(), settings.clip)
            optimizer.step()
            steps += 1
        scheduler.step()
        acc = heldout_accuracy(model, x_held, y_held)
        if acc > best_acc:
            best_acc, best_epoch, best_steps = acc, epoch, steps
            best_state = copy.deepcopy(model.state_dict())

    def kept(state: dict[str, torch.Tensor], kept_steps: int) -> TrainedTeacher:
        return TrainedTeacher({k: v.detach().cpu().contiguous() for k, v in state.items()},
                              best_acc, best_epoch, kept_steps)

    # "final" reproduces the official bug (tools.py:440): the saved state aliases the live
    # weights, so it holds the last epoch while the recorded accuracy is the best epoch's.
    return {"best": kept(best_state, best_steps), "final": kept(model.state_dict(), steps)}
