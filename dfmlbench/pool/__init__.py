"""Teacher pools: pre-trained once, cached by a hash of everything that determines them.

The cache folder holds teachers 0, 1, 2, ... of one (dataset, architecture, protocol, seed).
Teacher i does not depend on the pool size, so a pool of 20 is the first 20 of a pool of 100,
and an interrupted build resumes at the first missing teacher.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from dfmlbench import __version__
from dfmlbench.data.base import ImageDataset
from dfmlbench.data.multidomain import DomainTeacher, MultiDomainDataset
from dfmlbench.errors import UserError
from dfmlbench.models import ARCHITECTURES
from dfmlbench.paths import cache_dir
from dfmlbench.pool.pretrain import PretrainSettings, derive_seed, pretrain_teacher, teacher_classes
from dfmlbench.pool.store import (FORMAT, FORMAT_VERSION, MANIFEST, Teacher, TeacherPool,
                                  load_pool, read_manifest, write_manifest, write_teacher)
from dfmlbench.registry import did_you_mean

POOL_CODE_VERSION = 1  # bump when pre-training code changes what it produces
MIXED = "mix"  # pool.arch: each teacher's architecture drawn (seeded) from MIXED_ARCHITECTURES
MIXED_ARCHITECTURES = ("conv4", "resnet10", "resnet18")  # Table 4 (free.md §10)


@dataclass(frozen=True)
class PoolSpec:
    arch: str = "conv4"
    num_teachers: int = 100
    way: int = 5
    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.01
    clip: float = 50.0
    select: str = "best"
    seed: int = 0
    path: str | None = None  # a ready pool folder: bring your own models

    def arch_of(self, index: int) -> str:
        """Teacher `index`'s architecture: `arch`, or for a mixed pool a draw seeded by
        (seed, index) alone, so a smaller mixed pool is a prefix of a bigger one."""
        if self.arch != MIXED:
            return self.arch
        return MIXED_ARCHITECTURES[derive_seed("teacher-arch", self.seed, index) % len(MIXED_ARCHITECTURES)]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "PoolSpec":
        unknown = sorted(set(config) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError(f"unknown pool setting '{unknown[0]}': "
                            f"{did_you_mean(unknown[0], list(cls.__dataclass_fields__))}")
        spec = cls(**config)
        if spec.arch not in ARCHITECTURES and spec.arch != MIXED:
            choices = [*ARCHITECTURES, MIXED]
            raise UserError(f"unknown pool.arch '{spec.arch}': {did_you_mean(spec.arch, choices)}")
        if spec.select not in ("best", "final"):
            raise UserError(f"pool.select must be 'best' or 'final', got '{spec.select}'")
        if spec.num_teachers < 1 or spec.way < 2 or spec.epochs < 1:
            raise UserError("pool.num_teachers >= 1, pool.way >= 2 and pool.epochs >= 1 are required")
        return spec

    def settings(self) -> PretrainSettings:
        return PretrainSettings(self.epochs, self.batch_size, self.lr, self.clip, self.select)


def pool_key(dataset: ImageDataset, spec: PoolSpec) -> str:
    """Hash of what determines the teachers (not their number: teacher i never depends on it)."""
    identity = {"dataset": dataset.name, "data": dataset.fingerprint(), "code": POOL_CODE_VERSION,
                **{k: v for k, v in asdict(spec).items() if k not in ("num_teachers", "path")}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _new_manifest(dataset: ImageDataset, spec: PoolSpec, key: str) -> dict[str, Any]:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "key": key,
        "dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint(),
        "image_size": dataset.image_size, "in_channels": dataset.channels,
        "mean": list(dataset.mean), "std": list(dataset.std),
        "pretrain": {k: v for k, v in asdict(spec).items() if k not in ("num_teachers", "path")},
        "created_by": {"dfmlbench": __version__, "torch": torch.__version__,
                       "python": platform.python_version()},
        "teachers": [],
    }


def build_pool(dataset: ImageDataset, spec: PoolSpec, folder: Path,
               device: torch.device | str = "cpu",
               on_teacher: Callable[[int, int], None] | None = None) -> None:
    """Pre-train teachers until `folder` holds `spec.num_teachers`; each finished teacher is
    committed (weights, then manifest) at once, so a killed build loses at most one teacher."""
    key = pool_key(dataset, spec)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(folder) if (folder / MANIFEST).is_file() else _new_manifest(dataset, spec, key)
    if manifest.get("key") != key:
        raise UserError(f"{folder} holds a different pool (key {manifest.get('key')}, expected {key}); "
                        "remove the folder or choose another pool.path")
    train_classes = dataset.splits["train"]
    for index in range(len(manifest["teachers"]), spec.num_teachers):
        started = time.perf_counter()
        classes = teacher_classes(train_classes, spec.way, spec.seed, index)
        arch = spec.arch_of(index)
        trained = pretrain_teacher(dataset, classes, arch, spec.settings(),
                                   derive_seed("teacher", spec.seed, index), device)
        file_name, sha = write_teacher(folder, index, trained.state)
        manifest["teachers"].append({
            "file": file_name, "arch": arch, "class_ids": classes,
            "class_names": [dataset.class_names[c] for c in classes],
            "heldout_acc": trained.heldout_acc, "best_epoch": trained.best_epoch,
            "train_seconds": round(time.perf_counter() - started, 3), "sha256": sha,
        })
        write_manifest(folder, manifest)
        if on_teacher is not None:
            on_teacher(index + 1, spec.num_teachers)


def obtain_pool(dataset: ImageDataset | MultiDomainDataset, spec: PoolSpec, device: torch.device | str = "cpu",
                on_teacher: Callable[[int, int], None] | None = None) -> TeacherPool:
    """The pool a run uses: `spec.path` when given, else the cache (built or extended as needed)."""
    if isinstance(dataset, MultiDomainDataset):
        return _multidomain_pool(dataset, spec, device, on_teacher)
    if spec.path:
        pool = load_pool(Path(spec.path).expanduser(), spec.num_teachers, device)
        if pool.image_size != dataset.image_size or pool.in_channels != dataset.channels:
            raise UserError(f"pool at {spec.path} expects {pool.in_channels}x{pool.image_size}px "
                            f"images but {dataset.name} has {dataset.channels}x{dataset.image_size}px")
        return pool
    key = pool_key(dataset, spec)
    folder = cache_dir() / "pools" / f"{dataset.name}-{spec.arch}-{spec.way}way-{key}"
    have = len(read_manifest(folder)["teachers"]) if (folder / MANIFEST).is_file() else 0
    if have < spec.num_teachers:
        build_pool(dataset, spec, folder, device, on_teacher)
    return load_pool(folder, spec.num_teachers, device, key)


def _multidomain_pool(data: MultiDomainDataset, spec: PoolSpec, device: torch.device | str,
                      on_teacher: Callable[[int, int], None] | None) -> TeacherPool:
    """Teacher i comes from domain d(i), drawn from (seed, i) alone, and is the next teacher of
    that domain's own cached pool (trained on its images at its size and statistics); it is
    wrapped to take the shared image space, and its class ids move into the shared label space."""
    if spec.path:
        raise UserError(f"pool.path cannot serve the multi-domain dataset '{data.name}': its teachers "
                        "come from each domain's own pool; leave pool.path null")
    picks, counts = [], [0] * len(data.domains)
    for index in range(spec.num_teachers):
        domain = derive_seed("teacher-domain", spec.seed, index) % len(data.domains)
        picks.append((domain, counts[domain]))
        counts[domain] += 1
    pools = {d: obtain_pool(data.domains[d].source, replace(spec, num_teachers=count), device)
             for d, count in enumerate(counts) if count}
    done = 0
    teachers = []
    for index, (d, position) in enumerate(picks):
        domain, own = data.domains[d], pools[d][position]
        model = DomainTeacher(own.model, domain.source.image_size, domain.source.mean, domain.source.std,
                              data.mean, data.std).to(device).eval().requires_grad_(False)
        teachers.append(Teacher(index, own.arch, model, [domain.offset + c for c in own.class_ids],
                                [f"{domain.name}/{n}" for n in own.class_names], own.heldout_acc, own.sha256))
        done += 1
        if on_teacher is not None:
            on_teacher(done, spec.num_teachers)
    key = hashlib.sha256("+".join(f"{d}:{p.key}" for d, p in sorted(pools.items())).encode()).hexdigest()[:16]
    return TeacherPool(teachers, data.name, data.image_size, data.channels, data.mean, data.std,
                       next(iter(pools.values())).path, key,
                       {"domains": {data.domains[d].name: {"teachers": counts[d], "key": p.key, "path": str(p.path)}
                                    for d, p in pools.items()}})


__all__ = ["PoolSpec", "Teacher", "TeacherPool", "build_pool", "load_pool", "obtain_pool", "pool_key"]
