"""Omniglot (Lake's background-small subset) from `omniglot_bg_small_28.npz`, no pickle.

Choices (README 'Datasets', docs/deviations.md D-O1..3): images are inverted to ink = 255 on a black background (the
MAML convention, so that zero padding matches the background), resized 28 -> 32 px so the
Conv4 geometry is CIFAR-FS's (2x2x32 = 128-d features), and fed as 3 identical channels so
every model and the RGB generators of the inversion methods apply unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dfmlbench.data.base import ImageDataset, channel_stats, images_of_classes
from dfmlbench.data.npz import Array, read_source
from dfmlbench.errors import UserError
from dfmlbench.paths import data_root_candidates

FILE_NAME = "omniglot_bg_small_28.npz"
IMAGE_SIZE = 32
# The alphabet-disjoint split of this subset (shared/data/README.md): 155 / 41 / 46 classes.
SPLIT_ALPHABETS = {
    "train": ("Japanese_(katakana)", "Korean", "Latin", "Sanskrit"),
    "val": ("Greek", "Tagalog"),
    "test": ("Balinese", "Early_Aramaic"),
}
# The arrays read (shared/data/README.md); ink is 0 on 255 paper, any image size.
SOURCE_ARRAYS = {"images": Array("uint8", ("images", None, None, 1)),
                 "labels": Array("integer", ("images",), below="classes"),
                 "class_names": Array("string", ("classes",)),
                 "alphabets": Array("string", ("classes",))}


def find_file(data_root: str | None) -> Path:
    candidates = data_root_candidates(data_root)
    for folder in candidates:
        for path in (folder / FILE_NAME, folder / "omniglot" / FILE_NAME):
            if path.is_file():
                return path
    looked = ", ".join(str(c) for c in candidates)
    raise UserError(
        f"dataset 'omniglot' not found: no {FILE_NAME} in {looked}; put the file there or "
        f"pass --data-root DIR (or set DFMLBENCH_DATA) to the folder that holds it")


def load_omniglot(data_root: str | None = None) -> ImageDataset:
    path = find_file(data_root)
    arrays = read_source(path, SOURCE_ARRAYS, fix=(
        f"re-copy {FILE_NAME} (shared/data/README.md says what it holds), then check it with "
        f"`python -m dfmlbench data verify omniglot`"))
    raw, labels = arrays["images"], arrays["labels"]
    class_names = [str(n) for n in arrays["class_names"]]
    alphabets = [str(a) for a in arrays["alphabets"]]
    splits = {split: [c for c, a in enumerate(alphabets) if a in names]
              for split, names in SPLIT_ALPHABETS.items()}
    empty = [split for split, ids in splits.items() if not ids]
    if empty:
        raise UserError(f"{path} holds no class of the {empty[0]} alphabets "
                        f"({', '.join(SPLIT_ALPHABETS[empty[0]])}), so it is not Lake's "
                        f"background-small subset; re-copy {FILE_NAME}")
    ink = torch.from_numpy(255 - raw).permute(0, 3, 1, 2).float()
    resized = F.interpolate(ink, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                            align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
    images = resized.expand(-1, 3, -1, -1).contiguous()
    labels_t = torch.from_numpy(labels.astype(np.int64))
    mean, std = channel_stats(images_of_classes(images, labels_t, splits["train"]))
    return ImageDataset("omniglot", images, labels_t, class_names, splits, mean, std,
                        notes=f"{path}; inverted (ink=255), 28->32 px bilinear, grey x3 channels")
