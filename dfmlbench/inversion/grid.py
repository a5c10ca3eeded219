"""The recovered-task image (Fig. 7): one row per class, saved beside the record."""

from __future__ import annotations

from pathlib import Path

import torch


def save_task_grid(images: torch.Tensor, labels: torch.Tensor, path: Path, per_class: int) -> None:
    """`images` in [0, 1], any label order; rows are classes in label order."""
    from torchvision.utils import save_image  # torchvision imports slowly: only when a grid is saved
    order = torch.argsort(labels.cpu(), stable=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.detach().cpu()[order].clamp(0, 1), path, nrow=per_class, padding=1)
