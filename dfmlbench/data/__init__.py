"""Dataset registry: every dataset loads into an `ImageDataset` of uint8 tensors."""

from __future__ import annotations

import json
from typing import Any, Callable

from dfmlbench.data.base import SPLITS, ImageDataset
from dfmlbench.data.facts import SplitFacts
from dfmlbench.data.glyphs_dataset import PAPER_DIFFICULTY
from dfmlbench.errors import UserError
from dfmlbench.registry import Registry, did_you_mean
from dfmlbench.schema import SEED, Rule, number

Loader = Callable[..., ImageDataset]

DATASETS: Registry[Loader] = Registry("dataset")
DATASETS.register("glyphs", "dfmlbench.data.glyphs_dataset:load_glyphs",
                  {"facts": SplitFacts.declared("glyphs", (64, 16, 20), 60)},
                  summary="built-in procedural strokes, 100 classes (64/16/20) x 60, RGB 32 px")
# A glyphs variant in the paper's teacher regime (docs/teacher-regime.md): 600 images a class,
# so teachers train as on CIFAR-FS. Its settings: the render seed, and the difficulty, chosen
# once by the rule of docs/teacher-regime.md (`python -m dfmlbench.glyphs_calibration`).
DATASETS.register("glyphs-paper", "dfmlbench.data.glyphs_dataset:load_glyphs_paper",
                  {"facts": SplitFacts.declared("glyphs-paper", (64, 16, 20), 600),
                   "options": {"seed": (0, SEED),
                               "difficulty": (PAPER_DIFFICULTY, number(0, low_open=True, high=10))}},
                  summary="procedural strokes in the paper's teacher regime, 100 classes (64/16/20) x 600, RGB 32 px")
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

_loaded: dict[tuple[str, str | None, str], ImageDataset] = {}


def dataset_options(name: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dataset's settings (`dataset_settings.<name>`): its defaults under `given`, each
    checked; {} for a dataset that takes none. Unknown keys or bad values stop in one line."""
    declared: dict[str, tuple[Any, Rule]] = DATASETS.get(name).settings.get("options", {})
    given = given or {}
    if given and not declared:
        raise UserError(f"dataset_settings.{name}: dataset '{name}' takes no settings")
    for key in given:
        if key not in declared:
            raise UserError(f"unknown setting 'dataset_settings.{name}.{key}': {did_you_mean(key, list(declared))}")
    return {key: rule.apply(f"dataset_settings.{name}.{key}", given.get(key, default))
            for key, (default, rule) in declared.items()}


def load_dataset(name: str, data_root: str | None = None, download: bool = False,
                 options: dict[str, Any] | None = None) -> ImageDataset:
    """Load (once per process) the named dataset (a `MultiDomainDataset` for `mix` and
    `mix-small`) under its settings (`dataset_options`). `download` lets a dataset registered
    with the setting `download` (cifar-fs, and `mix` for its CIFAR part) fetch its source when
    it is missing; others ignore it."""
    resolved = dataset_options(name, options)
    key = (name, data_root, json.dumps(resolved, sort_keys=True))
    if key not in _loaded:
        entry = DATASETS.get(name)
        fetch = {"download": True} if download and entry.settings.get("download") else {}
        _loaded[key] = entry.load()(data_root, **fetch, **resolved)
    return _loaded[key]


def settings_entry(config: dict[str, Any], name: str) -> dict[str, Any]:
    """What a cell config of dataset `name` holds of the suite's `dataset_settings`: the
    dataset's resolved settings, or nothing for a dataset that takes none (older hashes stay valid)."""
    options = dataset_options(name, config.get("dataset_settings", {}).get(name))
    return {"dataset_settings": options} if options else {}


def cell_dataset(config: dict[str, Any]) -> ImageDataset:
    """The dataset of a cell (or analysis) config: its name, settings and runtime's data root."""
    runtime = config["runtime"]
    return load_dataset(config["dataset"], runtime["data_root"], bool(runtime.get("download")),
                        config.get("dataset_settings"))


__all__ = ["DATASETS", "SPLITS", "ImageDataset", "cell_dataset", "dataset_options", "load_dataset", "settings_entry"]
