"""CUB-200-2011 (Wah et al.) from `CUB_200_2011/images/<NNN.Name>/`, split 100/50/50 by the
lists in `splits/cub/` (the official script's rule: sorted folder i goes to train if i % 2 == 0,
val if i % 4 == 1, test if i % 4 == 3), whole uncropped images resized to 84x84.

The official script shuffles each class's file list with an unseeded `random.shuffle`, and
that order decides the teachers' 80/20 train/held-out split. Here each class's sorted file
list is shuffled by a generator seeded with the class name: the same split on every machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dfmlbench.data.base import ImageDataset
from dfmlbench.data.image_files import list_images
from dfmlbench.data.sources import Survey, class_split, load_image_files, survey_class_files
from dfmlbench.errors import UserError
from dfmlbench.paths import data_root_candidates

NAME = "cub"
IMAGE_SIZE = 84
IMAGES_PER_CLASS = (41, 60)  # the published dataset: 11,788 images in 200 classes
SHUFFLE_SEED = 0
LOADER_VERSION = 1  # bump when the arrays this module builds change
HOW_TO_GET = ("download CUB_200_2011.tgz (Caltech-UCSD Birds-200-2011, "
              "https://www.vision.caltech.edu/datasets/cub_200_2011/) and extract it in one of "
              "those folders, or pass --data-root DIR (or set DFMLBENCH_DATA) to the folder that "
              "holds CUB_200_2011/")


def find_images_dir(data_root: str | None) -> Path:
    candidates = data_root_candidates(data_root)
    for folder in candidates:
        options = [folder / "CUB_200_2011" / "images", folder / "cub" / "CUB_200_2011" / "images",
                   folder / "CUB" / "CUB_200_2011" / "images"]
        if folder.name == "CUB_200_2011":
            options.append(folder / "images")
        if folder.name == "images" and folder.parent.name == "CUB_200_2011":
            options.append(folder)
        for images in options:
            if images.is_dir():
                return images
    hints = [f"{f / 'CUB_200_2011.tgz'} is not extracted; extract it there"
             for f in candidates if (f / "CUB_200_2011.tgz").is_file()]
    hint = f" ({'; '.join(hints)})" if hints else ""
    looked = ", ".join(str(c) for c in candidates)
    raise UserError(f"dataset '{NAME}' not found: no CUB_200_2011/images/ in {looked}{hint}; {HOW_TO_GET}")


def shuffled(files: list[Path], class_name: str) -> list[Path]:
    """A class's files in its seeded order (the first 80% train a teacher, the rest are held out)."""
    rng = np.random.default_rng([SHUFFLE_SEED, *class_name.encode()])
    return [files[i] for i in rng.permutation(len(files))]


def survey_files(data_root: str | None = None) -> tuple[Survey, list[list[Path]]]:
    images_dir = find_images_dir(data_root)
    split = class_split("cub")
    with os.scandir(images_dir) as entries:
        folders = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    found = {name: shuffled(list_images(images_dir / name), name) for name in folders}
    errors: list[str] = []
    if not folders:
        errors.append(f"{images_dir} holds no class folders (001.Black_footed_Albatross, ...); "
                      f"extract CUB_200_2011.tgz again")

    def where(name: str) -> str:
        return f"images (.jpg) in {images_dir / name}/"

    return survey_class_files(NAME, images_dir, "CUB_200_2011/images/<NNN.Name>/", split, found,
                              IMAGES_PER_CLASS, where, errors, [])


def survey(data_root: str | None = None) -> Survey:
    return survey_files(data_root)[0]


def load_cub(data_root: str | None = None) -> ImageDataset:
    found, files = survey_files(data_root)
    return load_image_files(NAME, found, files, IMAGE_SIZE, LOADER_VERSION, [SHUFFLE_SEED], lambda cache: (
        f"{found.location}, whole images, sorted then shuffled per class (seed {SHUFFLE_SEED} + class "
        f"name), {IMAGE_SIZE} px PIL bilinear; cache {cache}"))
