"""miniImageNet (Vinyals et al.) with the Ravi & Larochelle split (64/16/20 wnids shipped in
`splits/miniimagenet/`), read from either layout people have:

- images + csv: `images/<file>.jpg` beside `train.csv`, `val.csv`, `test.csv` (header
  `filename,label`, label = wnid), as Ravi & Larochelle published it;
- class folders: one folder per wnid holding its images, directly in the dataset folder or
  one level down (`train/n01532829/`, or `meta_train/...` as in the FREE authors' zip).

Either way, a class's images are taken in sorted file-name order, resized to 84x84 once
(PIL bilinear, as the official `transforms.Resize`) and cached as uint8.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from dfmlbench.data.base import SPLITS, ImageDataset
from dfmlbench.data.image_files import list_images
from dfmlbench.data.npz import one_line
from dfmlbench.data.sources import ClassSplit, Survey, class_split, load_image_files, survey_class_files
from dfmlbench.errors import UserError
from dfmlbench.paths import data_root_candidates

NAME = "miniimagenet"
IMAGE_SIZE = 84
IMAGES_PER_CLASS = 600
LOADER_VERSION = 1  # bump when the arrays this module builds change
WNID = re.compile(r"^n\d{8}$")
CSV_NAMES = {split: f"{split}.csv" for split in SPLITS}
HOW_TO_GET = ("get miniImageNet (Ravi & Larochelle split: images/ plus train.csv, val.csv and "
              "test.csv, or one folder per wnid) and put it in a folder named miniimagenet inside "
              "one of those folders, or pass --data-root DIR (or set DFMLBENCH_DATA) to it")


def _is_mini_name(name: str) -> bool:
    return name.lower().replace("-", "").replace("_", "") == "miniimagenet"


def _wnid_folders(folder: Path) -> list[Path]:
    """Class folders (named like n01532829) in `folder` or one level below, sorted."""
    found: list[Path] = []
    with os.scandir(folder) as entries:
        children = sorted((e for e in entries if e.is_dir()), key=lambda e: e.name)
    for child in children:
        if WNID.match(child.name):
            found.append(Path(child.path))
        elif child.name != "images":  # a split folder such as train/ or meta_train/
            with os.scandir(child.path) as inner:
                found.extend(sorted(Path(e.path) for e in inner if e.is_dir() and WNID.match(e.name)))
    return found


def _looks_like_mini(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    return any((folder / n).is_file() for n in CSV_NAMES.values()) or bool(_wnid_folders(folder))


def find_root(data_root: str | None) -> Path:
    candidates = data_root_candidates(data_root)
    for folder in candidates:
        if not folder.is_dir():
            continue
        named = [c for c in sorted(folder.iterdir()) if c.is_dir() and _is_mini_name(c.name)]
        if named:
            return named[0]
        if _looks_like_mini(folder):  # --data-root pointing at the dataset folder itself
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise UserError(f"dataset '{NAME}' not found: no miniimagenet folder (nor train.csv or wnid "
                    f"class folders) in {looked}; {HOW_TO_GET}")


def _read_csv(path: Path, errors: list[str]) -> list[tuple[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            if header[:2] != ["filename", "label"]:
                errors.append(f"{path}: expected the header 'filename,label', got "
                              f"'{','.join(header)}'; use Ravi & Larochelle's csv files")
                return []
            rows = [(row[0].strip(), row[1].strip()) for row in reader if len(row) >= 2]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        errors.append(f"cannot read {path}: {one_line(exc)}; re-copy it from the miniImageNet "
                      f"download (UTF-8 text, a 'filename,label' header, one image a row)")
        return []
    return rows


def _scan_csv(root: Path, split: ClassSplit, errors: list[str], warnings: list[str]
              ) -> dict[str, list[Path]]:
    images_dir = root / "images"
    # One listing instead of one stat per row (60,000 rows).
    in_images = ({e.name for e in os.scandir(images_dir) if e.is_file()}
                 if images_dir.is_dir() else set())
    split_of = split.split_of()
    found: dict[str, list[Path]] = {}
    missing: list[tuple[str, Path]] = []
    for name, csv_name in CSV_NAMES.items():
        path = root / csv_name
        if not path.is_file():
            errors.append(f"{path} is missing: the images + csv layout needs "
                          f"{', '.join(CSV_NAMES.values())} beside images/")
            continue
        moved = set()
        for filename, label in _read_csv(path, errors):
            if label in split_of and split_of[label] != name:
                moved.add(label)
            if filename in in_images:
                image = images_dir / filename
            else:  # full or relative paths, or images/<wnid>/<file>
                options = [root / filename, images_dir / label / filename]
                image = next((p for p in options if p.is_file()), None)
                if image is None:
                    missing.append((filename, path))
                    continue
            found.setdefault(label, []).append(image)
        if moved:
            warnings.append(f"{path} lists {len(moved)} class(es) the Ravi split puts elsewhere "
                            f"(e.g. {sorted(moved)[0]} is in {split_of[sorted(moved)[0]]}); the "
                            f"shipped Ravi split is used")
    if missing:
        filename, listed_in = missing[0]
        errors.append(f"{len(missing)} image(s) listed in the csv files are missing, the first "
                      f"{images_dir / filename} (listed in {listed_in}); copy the images into {images_dir}")
    return {label: sorted(set(paths)) for label, paths in found.items()}


def _scan_folders(root: Path, errors: list[str]) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    where: dict[str, Path] = {}
    for folder in _wnid_folders(root):
        if folder.name in where:
            errors.append(f"class {folder.name} has two folders, {where[folder.name]} and {folder}; "
                          f"keep one (a class belongs to one split)")
            continue
        where[folder.name] = folder
        found[folder.name] = list_images(folder)
    return found


def survey_files(data_root: str | None = None) -> tuple[Survey, list[list[Path]]]:
    root = find_root(data_root)
    split = class_split("miniimagenet")
    errors: list[str] = []
    warnings: list[str] = []
    if any((root / n).is_file() for n in CSV_NAMES.values()):
        layout = "images/ + train/val/test.csv"
        found = _scan_csv(root, split, errors, warnings)

        def where(wnid: str) -> str:
            return f"rows labelled {wnid} in {root}/*.csv"
    else:
        layout = "one folder per class (wnid)"
        found = _scan_folders(root, errors)
        if not found:
            errors.append(f"{root} holds neither {', '.join(CSV_NAMES.values())} nor class folders "
                          f"named like n01532829 (directly or one level down); {HOW_TO_GET}")

        def where(wnid: str) -> str:
            return f"images (.jpg, .jpeg, .png) in {root}/{wnid}/ or {root}/<split>/{wnid}/"
    return survey_class_files(NAME, root, layout, split, found, (IMAGES_PER_CLASS, IMAGES_PER_CLASS),
                              where, errors, warnings)


def survey(data_root: str | None = None) -> Survey:
    return survey_files(data_root)[0]


def load_miniimagenet(data_root: str | None = None) -> ImageDataset:
    found, files = survey_files(data_root)
    return load_image_files(NAME, found, files, IMAGE_SIZE, LOADER_VERSION, [], lambda cache: (
        f"{found.location} ({found.layout}), sorted files, {IMAGE_SIZE} px PIL bilinear; cache {cache}"))
