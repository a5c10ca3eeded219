"""The `glyphs` dataset: rendered once from a seed, then cached as a uint8 .npz."""

from __future__ import annotations

import numpy as np
import torch

from dfmlbench.data.base import ImageDataset, channel_stats, images_of_classes
from dfmlbench.data.glyphs import render_glyphs
from dfmlbench.data.npz import Array, read_cache
from dfmlbench.paths import cache_dir, save_npz_atomic

RENDER_VERSION = 2  # bump when render_glyphs changes its output
SEED, NUM_CLASSES, IMAGES_PER_CLASS, IMAGE_SIZE = 0, 100, 60, 32
SPLIT_SIZES = {"train": 64, "val": 16, "test": 20}
CACHE_ARRAYS = {"images": Array("uint8", (NUM_CLASSES * IMAGES_PER_CLASS, IMAGE_SIZE, IMAGE_SIZE, 3)),
                "labels": Array("int64", (NUM_CLASSES * IMAGES_PER_CLASS,), below=NUM_CLASSES),
                "class_names": Array("string", (NUM_CLASSES,))}


def load_glyphs(data_root: str | None = None) -> ImageDataset:
    """`data_root` is unused: glyphs are generated, not read."""
    path = (cache_dir() / "datasets" /
            f"glyphs-v{RENDER_VERSION}-seed{SEED}-{NUM_CLASSES}x{IMAGES_PER_CLASS}-{IMAGE_SIZE}px.npz")
    cached = read_cache(path, CACHE_ARRAYS)  # None: absent, or damaged (said on stderr)
    if cached is not None:
        raw, labels, names = cached["images"], cached["labels"], [str(n) for n in cached["class_names"]]
    else:
        raw, labels, names = render_glyphs(SEED, NUM_CLASSES, IMAGES_PER_CLASS, IMAGE_SIZE)
        save_npz_atomic(path, images=raw, labels=labels, class_names=np.asarray(names))
    images = torch.from_numpy(np.ascontiguousarray(raw)).permute(0, 3, 1, 2).contiguous()
    labels_t = torch.from_numpy(labels.astype(np.int64))
    bounds = np.cumsum([0, *SPLIT_SIZES.values()])
    splits = {split: list(range(bounds[i], bounds[i + 1])) for i, split in enumerate(SPLIT_SIZES)}
    mean, std = channel_stats(images_of_classes(images, labels_t, splits["train"]))
    return ImageDataset("glyphs", images, labels_t, names, splits, mean, std,
                        notes=f"procedural, render v{RENDER_VERSION}, seed {SEED}")
