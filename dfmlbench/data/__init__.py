"""Dataset registry: every dataset loads into an `ImageDataset` of uint8 tensors."""

from __future__ import annotations

from typing import Callable

from dfmlbench.data.base import SPLITS, ImageDataset
from dfmlbench.registry import Registry

Loader = Callable[[str | None], ImageDataset]

DATASETS: Registry[Loader] = Registry("dataset")
DATASETS.register("glyphs", "dfmlbench.data.glyphs_dataset:load_glyphs",
                  summary="built-in procedural strokes, 100 classes (64/16/20) x 60, RGB 32 px")
DATASETS.register("omniglot", "dfmlbench.data.omniglot:load_omniglot",
                  summary="Omniglot background-small subset, 242 classes (155/41/46) x 20, 32 px")

_loaded: dict[tuple[str, str | None], ImageDataset] = {}


def load_dataset(name: str, data_root: str | None = None) -> ImageDataset:
    """Load (once per process) the named dataset."""
    key = (name, data_root)
    if key not in _loaded:
        _loaded[key] = DATASETS.get(name).load()(data_root)
    return _loaded[key]


__all__ = ["DATASETS", "SPLITS", "ImageDataset", "load_dataset"]
