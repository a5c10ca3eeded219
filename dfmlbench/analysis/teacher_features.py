"""Penultimate features of the same images through several teachers (the paper's Fig. 4).

"We randomly sample 10 images of the same class and use 10 pre-trained models from CIFAR-FS
to extract their features": if teachers embedded images alike, the t-SNE would mix them;
separate clusters show the model heterogeneity FREE's task-level inversion deals with.
This reads real images, so it is an analysis for a figure, never part of a DFML method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from dfmlbench.data.base import ImageDataset
from dfmlbench.errors import UserError
from dfmlbench.pool.store import TeacherPool


@dataclass(frozen=True)
class TeacherFeatures:
    """Features (T, N, D) of N images of one class through T teachers, and where they came from."""

    features: np.ndarray  # (T, N, D) float32
    teacher_indices: list[int]
    teacher_archs: list[str]
    class_id: int  # absolute dataset class id of the images
    class_name: str
    image_indices: list[int]  # dataset indices of the N images


def teacher_features(pool: TeacherPool, dataset: ImageDataset, *, num_teachers: int = 10,
                     num_images: int = 10, split: Literal["train", "val", "test"] = "train", seed: int = 0,
                     device: torch.device | str = "cpu") -> TeacherFeatures:
    """Embed `num_images` seeded images of one seeded class of `split` with the pool's first
    `num_teachers` teachers, each in eval mode (BN running statistics, as teachers are used).

    The class is drawn among those with enough images; teachers are left exactly as found.
    """
    if num_teachers < 1 or num_images < 1:
        raise UserError(f"num_teachers and num_images must be >= 1, got {num_teachers} and {num_images}")
    if len(pool) < num_teachers:
        raise UserError(f"the pool at {pool.path} has {len(pool)} teachers, {num_teachers} were asked for; "
                        "lower num_teachers or build a bigger pool")
    if split not in dataset.splits:
        raise UserError(f"unknown split '{split}' of {dataset.name}; use one of {', '.join(dataset.splits)}")
    if pool.image_size != dataset.image_size or pool.in_channels != dataset.channels:
        raise UserError(f"the pool expects {pool.in_channels}x{pool.image_size}px images but "
                        f"{dataset.name} has {dataset.channels}x{dataset.image_size}px")
    classes = [int(c) for c in dataset.splits[split] if len(dataset.indices_of(int(c))) >= num_images]
    if not classes:
        largest = max((len(dataset.indices_of(int(c))) for c in dataset.splits[split]), default=0)
        raise UserError(f"no {split} class of {dataset.name} has {num_images} images (the largest has "
                        f"{largest}); lower num_images")
    rng = np.random.default_rng(seed)
    class_id = classes[int(rng.integers(len(classes)))]
    chosen = rng.choice(dataset.indices_of(class_id), size=num_images, replace=False)
    image_indices = sorted(int(i) for i in chosen)
    x = dataset.normalize(dataset.images[image_indices], device)

    teachers = [pool[i] for i in range(num_teachers)]
    rows = []
    for teacher in teachers:
        was_training = teacher.model.training
        teacher.model.eval()
        try:
            with torch.no_grad():
                rows.append(teacher.model.embed(x).float().cpu().numpy())
        finally:
            teacher.model.train(was_training)
    dims = sorted({row.shape[1] for row in rows})
    if len(dims) > 1:
        archs = sorted({t.arch for t in teachers})
        raise UserError(f"the t-SNE needs features of one size, these teachers give {dims} "
                        f"({', '.join(archs)}); use a single-architecture pool (e.g. conv4)")
    return TeacherFeatures(np.stack(rows).astype(np.float32), [t.index for t in teachers],
                           [t.arch for t in teachers], class_id, dataset.class_names[class_id],
                           image_indices)


__all__ = ["TeacherFeatures", "teacher_features"]
