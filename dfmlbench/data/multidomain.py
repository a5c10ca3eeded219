"""Several datasets as one multi-domain benchmark (Table 3, free.md §10 `md`): one absolute
label space (each domain's class ids shifted by the classes of the domains before it),
teachers from every domain, and a meta-test per domain.

Methods see one image space: `image_size` (the largest domain's, 84 px for the paper's mix)
normalised with `mean`/`std` (the domains' average). Each teacher is wrapped so that it takes
images of that space and sees them as its own domain's (resized, re-normalised); the
meta-learner is tested on each domain's own images at their own size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dfmlbench.data.base import ImageDataset


@dataclass
class Domain:
    name: str
    source: ImageDataset  # as loaded: its teachers are trained on it, with its own statistics
    dataset: ImageDataset  # the same images normalised with the benchmark's shared statistics
    offset: int  # absolute class id = offset + the domain's own class id


@dataclass
class MultiDomainDataset:
    name: str
    domains: list[Domain]

    @property
    def image_size(self) -> int:
        return max(d.dataset.image_size for d in self.domains)

    @property
    def channels(self) -> int:
        return self.domains[0].dataset.channels

    @property
    def mean(self) -> tuple[float, ...]:
        return self.domains[0].dataset.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.domains[0].dataset.std

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.name.encode())
        for domain in self.domains:
            digest.update(f"{domain.name}:{domain.offset}:{domain.dataset.fingerprint()}".encode())
        return digest.hexdigest()[:16]


def compose(name: str, datasets: list[ImageDataset]) -> MultiDomainDataset:
    """The domains in order, class ids offset by the classes before them, and every domain's
    images normalised for the meta-learner with the domains' average statistics (one input
    space for the learner, as the bank's images are; docs/deviations.md MD2)."""
    channels = {d.channels for d in datasets}
    if len(channels) != 1:
        raise ValueError(f"the domains of '{name}' have different channel counts: {sorted(channels)}")
    mean = tuple(round(sum(values) / len(values), 4) for values in zip(*(d.mean for d in datasets)))
    std = tuple(round(sum(values) / len(values), 4) for values in zip(*(d.std for d in datasets)))
    domains, offset = [], 0
    for dataset in datasets:
        domains.append(Domain(dataset.name, dataset, replace(dataset, mean=mean, std=std), offset))
        offset += len(dataset.class_names)
    return MultiDomainDataset(name, domains)


class DomainTeacher(nn.Module):
    """A teacher of one domain seen from the shared image space: undo the shared
    normalisation, resize (area) to the teacher's size, apply its own normalisation, run it.
    Resizing rather than cropping the generated image is D13's harness default."""

    def __init__(self, model: nn.Module, size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 shared_mean: tuple[float, ...], shared_std: tuple[float, ...]) -> None:
        super().__init__()
        self.model, self.size = model, size
        view: Callable[[tuple[float, ...]], torch.Tensor] = lambda v: torch.tensor(v).view(1, -1, 1, 1)
        self.register_buffer("scale", view(shared_std) / view(std), persistent=False)
        self.register_buffer("shift", (view(shared_mean) - view(mean)) / view(std), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="area")
        return self.model(x * self.scale + self.shift)


MEMBERS = {"mix": ("cifar-fs", "miniimagenet", "cub"),  # the paper's multi-domain benchmark
           "mix-small": ("omniglot", "glyphs")}  # laptop-sized, on the data at hand


def _load(name: str, data_root: str | None, download: bool) -> MultiDomainDataset:
    from dfmlbench.data import load_dataset
    return compose(name, [load_dataset(m, data_root, download) for m in MEMBERS[name]])


def load_mix(data_root: str | None = None, download: bool = False) -> MultiDomainDataset:
    return _load("mix", data_root, download)


def load_mix_small(data_root: str | None = None, download: bool = False) -> MultiDomainDataset:
    return _load("mix-small", data_root, download)


__all__ = ["MEMBERS", "Domain", "DomainTeacher", "MultiDomainDataset", "compose", "load_mix", "load_mix_small"]
