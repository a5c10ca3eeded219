"""`python -m dfmlbench pool show`: the teacher regime of each pool a suite's cells use (issue 17).

It builds nothing: a pool that is not built yet says so (the first cell that needs it builds
it). A cached pool built before the indicators existed gets them added to its manifest here."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from dfmlbench.data import load_dataset
from dfmlbench.data.base import ImageDataset
from dfmlbench.data.multidomain import MultiDomainDataset
from dfmlbench.locks import exclusive
from dfmlbench.pool import PoolSpec, backfill_regime, cache_folder, domain_pool_counts, load_pool
from dfmlbench.pool.regime import describe
from dfmlbench.pool.store import MANIFEST, pools_root, read_manifest


def pool_lines(dataset_name: str, spec: PoolSpec, data_root: str | None,
               options: dict[str, Any] | None = None) -> list[str]:
    """The regime summary of the pool (dataset under its settings `options`, spec), or one
    line saying why there is none."""
    dataset = load_dataset(dataset_name, data_root, False, options)
    if isinstance(dataset, MultiDomainDataset):
        lines = []
        for domain, count in zip(dataset.domains, domain_pool_counts(dataset, spec)):
            if count:
                lines += [f"domain {domain.name}:", *_single(domain.source, replace(spec, num_teachers=count))]
        return lines
    return _single(dataset, spec)


def _single(dataset: ImageDataset, spec: PoolSpec) -> list[str]:
    if spec.path:
        pool = load_pool(Path(spec.path).expanduser(), spec.num_teachers, "cpu", dataset=dataset)
        return describe(pool.metadata["regime"])
    folder = cache_folder(dataset, spec)
    have = len(read_manifest(folder, dataset)["teachers"]) if (folder / MANIFEST).is_file() else 0
    if have < spec.num_teachers:
        return [f"not built ({have}/{spec.num_teachers} teachers in {folder}); the first cell that needs it "
                "builds it (`run`)"]
    with exclusive(folder, pools_root(), f"the teacher pool {folder.name}"):
        backfill_regime(dataset, spec, folder)
    pool = load_pool(folder, spec.num_teachers, "cpu", dataset=dataset)
    return [f"{folder}", *describe(pool.metadata["regime"])]


__all__ = ["pool_lines"]
