"""CIFAR-FS (Bertinetto et al., ICLR 2019), built from CIFAR-100 as torchvision downloads it.

Every CIFAR-100 fine class keeps all its images (500 from the `train` file, then 100 from
`test`: 600), at the native 32 px, split 64/16/20 by the class lists in `splits/cifar_fs/`.
The files are read with torchvision's own `CIFAR100` reader, which checks each file's md5
against the published archive before unpickling it: the pickle format is trusted input only
because of that check. This module never unpickles anything itself.
"""

from __future__ import annotations

import os
import pickle  # only for its exception type: torchvision does the reading
from pathlib import Path

import numpy as np

from dfmlbench.data.base import ImageDataset
from dfmlbench.data.npz import one_line
from dfmlbench.data.sources import (Survey, cached_arrays, class_split, image_dataset,
                                    labelled_images, source_key)
from dfmlbench.errors import UserError
from dfmlbench.paths import cache_dir, check_writable_folder, data_root_candidates

NAME = "cifar-fs"
BASE_FOLDER = "cifar-100-python"  # torchvision's CIFAR100.base_folder
FILES = ("train", "test", "meta")
IMAGE_SIZE = 32
MEAN, STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)  # free.md §2, the official values
IMAGES_PER_CLASS = 600
LOADER_VERSION = 1  # bump when the arrays this module builds change
DOWNLOAD_ENV = "DFMLBENCH_DOWNLOAD"
HOW_TO_GET = ("run `python -m dfmlbench data download cifar-fs` (or set runtime.download=true or "
              f"{DOWNLOAD_ENV}=1), or put torchvision's {BASE_FOLDER}/ folder (from "
              "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz) in one of those folders, "
              "or pass --data-root DIR (or set DFMLBENCH_DATA) to the folder that holds it")


def search_folders(data_root: str | None) -> list[Path]:
    folders = data_root_candidates(data_root)
    if not data_root:
        folders.append(cache_dir() / "data")  # where `data download` puts it by default
    return list(dict.fromkeys(folders))


def download_folder(data_root: str | None) -> Path:
    """--data-root, else $DFMLBENCH_DATA, else the cache folder (never inside the package)."""
    chosen = data_root or os.environ.get("DFMLBENCH_DATA")
    return Path(chosen).expanduser() if chosen else cache_dir() / "data"


def find_root(data_root: str | None) -> Path | None:
    """The folder holding `cifar-100-python/` (torchvision's `root`), or None."""
    for folder in search_folders(data_root):
        if folder.name == BASE_FOLDER and folder.is_dir():
            return folder.parent
        for root in (folder, folder / "cifar100", folder / "cifar-100"):
            if (root / BASE_FOLDER).is_dir():
                return root
    return None


def _not_found(data_root: str | None) -> UserError:
    folders = search_folders(data_root)
    hints = []
    for folder in folders:
        if (folder / "cifar-100-binary").is_dir():
            hints.append(f"{folder / 'cifar-100-binary'} is the binary version; dfmlbench reads the "
                         f"python version ({BASE_FOLDER})")
        if (folder / "cifar-100-python.tar.gz").is_file():
            hints.append(f"{folder / 'cifar-100-python.tar.gz'} is not extracted; extract it there")
    hint = f" ({'; '.join(hints)})" if hints else ""
    looked = ", ".join(str(f) for f in folders)
    return UserError(f"dataset '{NAME}' not found: no {BASE_FOLDER}/ in {looked}{hint}; {HOW_TO_GET}")


def _diagnose(folder: Path) -> str:
    """Name the file behind torchvision's 'Dataset not found or corrupted' (it names none)."""
    from torchvision.datasets import CIFAR100, cifar

    table = [*CIFAR100.train_list, *CIFAR100.test_list, [CIFAR100.meta["filename"], CIFAR100.meta["md5"]]]
    for file_name, md5 in table:
        path = folder / file_name
        if not path.is_file():
            return f"{path} is missing; re-extract cifar-100-python.tar.gz or {HOW_TO_GET}"
        if not cifar.check_integrity(str(path), md5):
            return (f"{path} is damaged or not the published CIFAR-100 file (md5 mismatch); "
                    f"delete {folder} and download it again")
    return f"torchvision cannot read {folder}; delete it and download CIFAR-100 again"


def _read(root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All images (train file, then test file) as uint8 (N, 32, 32, 3), their fine labels and
    the fine label names, through torchvision's reader (md5-checked before unpickling)."""
    from torchvision.datasets import CIFAR100

    folder = root / BASE_FOLDER
    parts = []
    for train in (True, False):
        try:
            part = CIFAR100(str(root), train=train, download=False)
        except RuntimeError:  # torchvision's integrity check failed
            raise UserError(f"{NAME}: {_diagnose(folder)}") from None
        # Only reachable when the md5 table is not the published one (the damage passed the check).
        except (pickle.UnpicklingError, EOFError, KeyError, IndexError, ValueError, TypeError,
                AttributeError, ImportError, OverflowError) as exc:
            raise UserError(f"{NAME}: cannot read {folder / ('train' if train else 'test')} or "
                            f"{folder / 'meta'} as CIFAR-100 python files ({one_line(exc)}); "
                            f"download CIFAR-100 again") from None
        parts.append(part)
    classes = [str(c) for c in parts[0].classes]
    images = np.concatenate([p.data for p in parts])
    labels = np.concatenate([np.asarray(p.targets, dtype=np.int64) for p in parts])
    return images, labels, classes


def _survey(root: Path, labels: np.ndarray, classes: list[str]) -> tuple[Survey, np.ndarray]:
    """The survey, and each image's CIFAR-FS class id (-1: not in the split)."""
    split = class_split("cifar_fs")
    folder = root / BASE_FOLDER
    errors = []
    position = {name: i for i, name in enumerate(classes)}
    to_id = np.full(len(classes), -1, dtype=np.int64)
    split_of = split.split_of()
    for class_id, name in enumerate(split.class_names):
        if name in position:
            to_id[position[name]] = class_id
        else:
            errors.append(f"class {name} ({split_of[name]}) is not among the fine_label_names of "
                          f"{folder / 'meta'}; that file is not CIFAR-100's, download it again")
    in_range = (labels >= 0) & (labels < len(classes))
    if not in_range.all():
        errors.append(f"{folder}: fine labels outside 0..{len(classes) - 1}; download CIFAR-100 again")
    ids = np.full(len(labels), -1, dtype=np.int64)
    ids[in_range] = to_id[labels[in_range]]
    counts = np.bincount(ids[ids >= 0], minlength=len(split.class_names)).tolist()
    for class_id, name in enumerate(split.class_names):
        if name in position and counts[class_id] == 0:
            errors.append(f"class {name} ({split_of[name]}) has no images in {folder / 'train'} "
                          f"or {folder / 'test'}; download CIFAR-100 again")
    survey = Survey(NAME, folder, "torchvision CIFAR-100 python files (train, test, meta)", split,
                    counts, (IMAGES_PER_CLASS, IMAGES_PER_CLASS), errors)
    return survey, ids


def survey(data_root: str | None = None) -> Survey:
    """For `data verify`: reads the files (md5 checks included), decodes nothing else."""
    root = find_root(data_root)
    if root is None:
        raise _not_found(data_root)
    _, labels, classes = _read(root)
    return _survey(root, labels, classes)[0]


def _download(data_root: str | None) -> Path:
    from torchvision.datasets import CIFAR100

    target = download_folder(data_root)
    check_writable_folder(target, "the download folder")  # before any byte is fetched
    try:
        target.mkdir(parents=True, exist_ok=True)
        CIFAR100(str(target), train=True, download=True)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        raise UserError(f"{NAME}: could not download CIFAR-100 into {target} ({one_line(exc)}); "
                        f"download {CIFAR100.url} yourself and extract it there") from None
    return target


def download_requested(download: bool | None) -> bool:
    if download is not None:
        return download
    return os.environ.get(DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def load_cifar_fs(data_root: str | None = None, download: bool | None = None) -> ImageDataset:
    """`download` (default: ${DFMLBENCH_DOWNLOAD}) lets torchvision fetch CIFAR-100 when absent."""
    root = find_root(data_root)
    if root is None:
        if not download_requested(download):
            raise _not_found(data_root)
        root = _download(data_root)
    folder = root / BASE_FOLDER
    missing = [folder / f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{NAME}: {missing[0]} is missing; re-extract cifar-100-python.tar.gz "
                        f"there, or {HOW_TO_GET}")
    split = class_split("cifar_fs")
    key = source_key([NAME, LOADER_VERSION, IMAGE_SIZE, split.text()], [folder / f for f in FILES])

    def build() -> dict[str, np.ndarray]:
        images, labels, classes = _read(root)
        found, ids = _survey(root, labels, classes)
        found.raise_first_error()
        keep = np.flatnonzero(ids >= 0)
        order = keep[np.argsort(ids[keep], kind="stable")]  # class by class; train file first
        return {"images": np.ascontiguousarray(images[order].transpose(0, 3, 1, 2)),
                "labels": ids[order]}

    arrays, path, _ = cached_arrays(NAME, IMAGE_SIZE, LOADER_VERSION, folder, key, build,
                                    labelled_images(IMAGE_SIZE, len(split.class_names)))
    return image_dataset(NAME, arrays, split, MEAN, STD,
                         notes=f"{folder} via torchvision CIFAR100 (train then test images of each "
                               f"fine class), 32 px; cache {path}")
