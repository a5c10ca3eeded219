"""What the real datasets (cifar-fs, miniimagenet, cub) share: the shipped class splits, a
survey of the files on disk, and the uint8 cache keyed by the source files and image size.

A loader and `python -m dfmlbench data verify` run the same survey: the loader stops at its
first error, verify prints every error and warning. Class ids are the shipped split's order:
the sorted meta-train classes, then meta-val, then meta-test (so meta-train ids are
0..n_train-1, the offsets the multi-domain `mix` setting uses).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from dfmlbench.data.base import SPLITS, ImageDataset
from dfmlbench.data.npz import Array, read_cache
from dfmlbench.errors import UserError
from dfmlbench.paths import PACKAGE_DIR, cache_dir, save_npz_atomic

SPLITS_DIR = PACKAGE_DIR / "data" / "splits"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # free.md §2


@dataclass(frozen=True)
class ClassSplit:
    """A shipped split (`data/splits/<folder>/{train,val,test}.txt`, one class name a line)."""

    folder: str
    names: dict[str, list[str]]  # split -> sorted class names

    @property
    def class_names(self) -> list[str]:
        return [name for split in SPLITS for name in self.names[split]]

    @property
    def splits(self) -> dict[str, list[int]]:
        ids, start = {}, 0
        for split in SPLITS:
            ids[split] = list(range(start, start + len(self.names[split])))
            start += len(self.names[split])
        return ids

    def split_of(self) -> dict[str, str]:
        return {name: split for split in SPLITS for name in self.names[split]}

    def overlaps(self) -> list[str]:
        """Classes listed in more than one split (none in the shipped lists; verify checks)."""
        seen: dict[str, str] = {}
        problems = []
        for split in SPLITS:
            for name in self.names[split]:
                if name in seen:
                    problems.append(f"class {name} is listed in both {seen[name]} and {split} of "
                                    f"{SPLITS_DIR / self.folder}; the splits must be disjoint")
                seen.setdefault(name, split)
        return problems

    def text(self) -> str:
        return "\n".join(f"{s}:{','.join(self.names[s])}" for s in SPLITS)


def class_split(folder: str) -> ClassSplit:
    names = {}
    for split in SPLITS:
        path = SPLITS_DIR / folder / f"{split}.txt"
        names[split] = sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})
    return ClassSplit(folder, names)


@dataclass
class Survey:
    """What a dataset's files hold, found without decoding any image."""

    dataset: str
    location: Path
    layout: str
    split: ClassSplit
    counts: list[int]  # images found per class id
    expected_per_class: tuple[int, int]  # (min, max) in the published dataset
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.errors[:0] = self.split.overlaps()
        names = self.split.class_names
        low, high = self.expected_per_class
        outside = [c for c, n in enumerate(self.counts) if n and not low <= n <= high]
        if outside:
            few = min(self.counts[c] for c in outside)
            many = max(self.counts[c] for c in outside)
            published = f"{low}" if low == high else f"{low}-{high}"
            self.warnings.append(
                f"{len(outside)} class(es) have {few}-{many} images where the published dataset has "
                f"{published} (e.g. {names[outside[0]]}): loading works, but results are not "
                f"comparable to the paper's; re-copy the missing images")

    def raise_first_error(self) -> None:
        """The loader's check: one line naming the first problem (verify lists them all)."""
        if self.errors:
            more = (f" ({len(self.errors) - 1} more problem(s): python -m dfmlbench data verify "
                    f"{self.dataset})" if len(self.errors) > 1 else "")
            raise UserError(f"{self.dataset}: {self.errors[0]}{more}")


def survey_class_files(dataset: str, location: Path, layout: str, split: ClassSplit,
                       found: dict[str, list[Path]], expected_per_class: tuple[int, int],
                       where: Callable[[str], str], errors: list[str], warnings: list[str]
                       ) -> tuple[Survey, list[list[Path]]]:
    """A survey of image files grouped by class name; `where(name)` says where a class's images
    were looked for. Returns it with each split class's files, in class-id order."""
    split_of = split.split_of()
    files = [found.get(name, []) for name in split.class_names]
    for name, paths in zip(split.class_names, files):
        if not paths:
            errors.append(f"class {name} ({split_of[name]}) has no images: looked for {where(name)}")
    owner: dict[Path, str] = {}
    for name, paths in zip(split.class_names, files):
        for path in paths:
            if owner.setdefault(path, name) != name:
                errors.append(f"image {path} belongs to two classes ({owner[path]} and {name}); "
                              f"each image must belong to one class")
                break
    extra = sorted(set(found) - set(split_of))
    if extra:
        warnings.append(f"{len(extra)} class(es) not in the shipped split are ignored "
                        f"(e.g. {extra[0]}; split lists: {SPLITS_DIR / split.folder})")
    survey = Survey(dataset, location, layout, split, [len(p) for p in files], expected_per_class,
                    errors, warnings)
    return survey, files


# --- the uint8 cache -----------------------------------------------------------------------------


def source_key(parts: Iterable[object], files: Iterable[Path]) -> str:
    """Identity of a decoded dataset: the loader's settings and every source file's path, size
    and modification time (stat only, so a second run does not read the images again)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(f"{part}\0".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def labelled_images(image_size: int, num_classes: int) -> dict[str, Array]:
    """What a real dataset's cache holds: uint8 images (N, 3, size, size) stored class after
    class, and their class ids (N,)."""
    return {"images": Array("uint8", ("images", 3, image_size, image_size)),
            "labels": Array("int64", ("images",), below=num_classes)}


def cached_arrays(dataset: str, image_size: int, version: int, location: Path, key: str,
                  build: Callable[[], dict[str, np.ndarray]], expect: dict[str, Array]
                  ) -> tuple[dict[str, np.ndarray], Path, bool]:
    """Load `<cache>/datasets/<dataset>-v<version>-<size>px-<where>-<key>.npz` (its arrays as
    `expect` says), or build and write it atomically; a damaged cache file is said on stderr and
    rebuilt. A new build replaces older caches of the same source folder, so a changed file does
    not leave a stale copy of the whole dataset behind. Returns (arrays, cache path, whether it
    was a cache hit)."""
    where = hashlib.sha256(str(location.resolve()).encode()).hexdigest()[:8]
    prefix = f"{dataset}-v{version}-{image_size}px-{where}-"
    folder = cache_dir() / "datasets"
    path = folder / f"{prefix}{key}.npz"
    cached = read_cache(path, expect)
    if cached is not None:
        return cached, path, True
    arrays = build()
    save_npz_atomic(path, **arrays)
    for stale in folder.glob(f"{prefix}*.npz"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return arrays, path, False


def image_dataset(name: str, arrays: dict[str, np.ndarray], split: ClassSplit,
                  mean: tuple[float, ...], std: tuple[float, ...], notes: str) -> ImageDataset:
    """`arrays` holds `images` uint8 (N, 3, H, W) and `labels` (class ids of `split`)."""
    images = torch.from_numpy(np.ascontiguousarray(arrays["images"]))
    labels = torch.from_numpy(arrays["labels"].astype(np.int64))
    return ImageDataset(name, images, labels, split.class_names, split.splits, mean, std, notes)


def grouped_labels(counts: list[int]) -> np.ndarray:
    """Class ids of images stored class after class: [0]*counts[0] + [1]*counts[1] + ..."""
    return np.repeat(np.arange(len(counts), dtype=np.int64), counts)


def load_image_files(name: str, found: Survey, files: list[list[Path]], image_size: int, version: int,
                     key_parts: list[object], notes: Callable[[Path], str]) -> ImageDataset:
    """An image-folder dataset (miniImageNet, CUB): stop at the survey's first error, then read the
    cache or decode every file once (resized, uint8) and cache it. `key_parts` are the loader's
    own settings that change the arrays; `notes(cache_path)` describes the result."""
    from dfmlbench.data.image_files import decode_images  # PIL only when a loader needs it

    found.raise_first_error()
    paths = [p for class_files in files for p in class_files]
    key = source_key([name, version, image_size, *key_parts, found.split.text()], paths)

    def build() -> dict[str, np.ndarray]:
        return {"images": decode_images(paths, image_size, f"decoding {name}"),
                "labels": grouped_labels(found.counts)}

    arrays, path, _ = cached_arrays(name, image_size, version, found.location, key, build,
                                    labelled_images(image_size, len(found.split.class_names)))
    return image_dataset(name, arrays, found.split, IMAGENET_MEAN, IMAGENET_STD, notes=notes(path))
