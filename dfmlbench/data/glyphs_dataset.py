"""The `glyphs` datasets: rendered once from a seed, then cached as a uint8 .npz.

`glyphs` (100 x 60) is the built-in data of the quickstart and the tests. `glyphs-paper`
(100 x 600) is sized like CIFAR-FS, so that teachers train as the paper's do (480 images a
class, about 1,100 steps); its difficulty is fixed by the rule of docs/teacher-regime.md and
its render seed is a setting (`dataset_settings.glyphs-paper.seed`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dfmlbench.data.base import ImageDataset, channel_stats, images_of_classes
from dfmlbench.data.glyphs import render_glyphs
from dfmlbench.data.npz import Array, read_cache
from dfmlbench.paths import cache_dir, save_npz_atomic

RENDER_VERSION = 2  # bump when render_glyphs changes its output
# glyphs-paper's difficulty: the smallest rung of the ladder that passed the rule stated in
# docs/teacher-regime.md before any method ran on it (reports/glyphs-paper-calibration).
PAPER_DIFFICULTY = 3.0


@dataclass(frozen=True)
class GlyphsVariant:
    name: str
    num_classes: int
    images_per_class: int
    image_size: int = 32
    split_sizes: tuple[int, int, int] = (64, 16, 20)  # train / val / test classes, as CIFAR-FS

    def cache_arrays(self) -> dict[str, Array]:
        n = self.num_classes * self.images_per_class
        return {"images": Array("uint8", (n, self.image_size, self.image_size, 3)),
                "labels": Array("int64", (n,), below=self.num_classes),
                "class_names": Array("string", (self.num_classes,))}


GLYPHS = GlyphsVariant("glyphs", 100, 60)
GLYPHS_PAPER = GlyphsVariant("glyphs-paper", 100, 600)


def load_variant(variant: GlyphsVariant, seed: int = 0, difficulty: float = 1.0) -> ImageDataset:
    """The variant rendered from `seed` at `difficulty` (cached after the first render)."""
    hardness = "" if difficulty == 1 else f"-d{difficulty:g}"  # the built-in glyphs keep their file name
    path = (cache_dir() / "datasets" / f"{variant.name}-v{RENDER_VERSION}-seed{seed}{hardness}-"
            f"{variant.num_classes}x{variant.images_per_class}-{variant.image_size}px.npz")
    cached = read_cache(path, variant.cache_arrays())  # None: absent, or damaged (said on stderr)
    if cached is not None:
        raw, labels, names = cached["images"], cached["labels"], [str(n) for n in cached["class_names"]]
    else:
        raw, labels, names = render_glyphs(seed, variant.num_classes, variant.images_per_class,
                                           variant.image_size, difficulty)
        save_npz_atomic(path, images=raw, labels=labels, class_names=np.asarray(names))
    images = torch.from_numpy(np.ascontiguousarray(raw)).permute(0, 3, 1, 2).contiguous()
    labels_t = torch.from_numpy(labels.astype(np.int64))
    bounds = np.cumsum([0, *variant.split_sizes])
    splits = {split: list(range(bounds[i], bounds[i + 1])) for i, split in enumerate(("train", "val", "test"))}
    mean, std = channel_stats(images_of_classes(images, labels_t, splits["train"]))
    return ImageDataset(variant.name, images, labels_t, names, splits, mean, std,
                        notes=f"procedural, render v{RENDER_VERSION}, seed {seed}" + hardness.replace("-d", ", difficulty "))


def load_glyphs(data_root: str | None = None) -> ImageDataset:
    """`data_root` is unused: glyphs are generated, not read."""
    return load_variant(GLYPHS)


def load_glyphs_paper(data_root: str | None = None, seed: int = 0,
                      difficulty: float = PAPER_DIFFICULTY) -> ImageDataset:
    """`data_root` is unused: glyphs are generated, not read."""
    return load_variant(GLYPHS_PAPER, seed, difficulty)
