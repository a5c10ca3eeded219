"""Dataset registry: every dataset loads into an `ImageDataset` of uint8 tensors."""

from __future__ import annotations

from typing import Callable

from dfmlbench.data.base import SPLITS, ImageDataset
from dfmlbench.data.facts import SplitFacts
from dfmlbench.registry import Registry

Loader = Callable[[str | None], ImageDataset]

DATASETS: Registry[Loader] = Registry("dataset")
DATASETS.register("glyphs", "dfmlbench.data.glyphs_dataset:load_glyphs",
                  {"facts": SplitFacts.declared("glyphs", (64, 16, 20), 60)},
                  summary="built-in procedural strokes, 100 classes (64/16/20) x 60, RGB 32 px")
DATASETS.register("omniglot", "dfmlbench.data.omniglot:load_omniglot",
                  {"facts": SplitFacts.declared("omniglot", (155, 41, 46), 20)},
                  summary="Omniglot background-small subset, 242 classes (155/41/46) x 20, 32 px")
DATASETS.register("cifar-fs", "dfmlbench.data.cifar_fs:load_cifar_fs",
                  {"download": True, "facts": SplitFacts.declared("cifar-fs", (64, 16, 20), 600)},
                  summary="CIFAR-FS from CIFAR-100 (python files), 100 classes (64/16/20) x 600, 32 px")
DATASETS.register("miniimagenet", "dfmlbench.data.miniimagenet:load_miniimagenet",
                  {"facts": SplitFacts.declared("miniimagenet", (64, 16, 20), 600)},
                  summary="miniImageNet, Ravi split, 100 classes (64/16/20) x 600, 84 px")
DATASETS.register("cub", "dfmlbench.data.cub:load_cub",
                  {"facts": SplitFacts.declared("cub", (100, 50, 50), 41)},
                  summary="CUB-200-2011 images, 200 classes (100/50/50) x 41-60, 84 px")

DATASETS.register("mix", "dfmlbench.data.multidomain:load_mix", settings={"download": True},
                  summary="multi-domain (Table 3): cifar-fs + miniimagenet + cub, one label space, a meta-test per domain")
DATASETS.register("mix-small", "dfmlbench.data.multidomain:load_mix_small",
                  summary="multi-domain on the data at hand: omniglot + glyphs (for cpu and smoke profiles)")

_loaded: dict[tuple[str, str | None], ImageDataset] = {}


def load_dataset(name: str, data_root: str | None = None, download: bool = False) -> ImageDataset:
    """Load (once per process) the named dataset (a `MultiDomainDataset` for `mix` and
    `mix-small`). `download` lets a dataset registered with the setting `download` (cifar-fs,
    and `mix` for its CIFAR part) fetch its source when it is missing; others ignore it."""
    key = (name, data_root)
    if key not in _loaded:
        entry = DATASETS.get(name)
        fetch = {"download": True} if download and entry.settings.get("download") else {}
        _loaded[key] = entry.load()(data_root, **fetch)
    return _loaded[key]


__all__ = ["DATASETS", "SPLITS", "ImageDataset", "load_dataset"]
