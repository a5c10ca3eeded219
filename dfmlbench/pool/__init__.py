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
from safetensors.torch import load_file

from dfmlbench import __version__
from dfmlbench.data.base import ImageDataset
from dfmlbench.data.multidomain import DomainTeacher, MultiDomainDataset
from dfmlbench.errors import UserError, note
from dfmlbench.locks import claimed, exclusive
from dfmlbench.models import ARCHITECTURES
from dfmlbench.pool.pretrain import (PretrainSettings, TrainedTeacher, derive_seed, pretrain_teacher_both,
                                     split_train_heldout, teacher_classes)
from dfmlbench.pool.regime import REGIME_FIELD, initial_state, steps_taken, teacher_regime
from dfmlbench.pool.store import (FORMAT, FORMAT_VERSION, MANIFEST, Teacher, TeacherPool, pool_error,
                                  check_teacher_file, load_pool, manifest_key, pools_root, read_manifest,
                                  run_facts, select_teachers, write_manifest, write_teacher)
from dfmlbench.registry import did_you_mean

POOL_CODE_VERSION = 1  # bump when pre-training code changes what it produces
MIXED = "mix"  # pool.arch: each teacher's architecture drawn (seeded) from MIXED_ARCHITECTURES
MIXED_ARCHITECTURES = ("conv4", "resnet10", "resnet18")  # Table 4 (free.md §10)
TWIN_SELECT = {"best": "final", "final": "best"}  # pools that one training run fills both of


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
               on_teacher: Callable[[int, int], None] | None = None, fill_twin: bool = False) -> None:
    """Pre-train teachers until `folder` holds `spec.num_teachers`; each finished teacher is
    committed (weights, then manifest) at once, so a killed build loses at most one teacher.
    `fill_twin`: each teacher also goes to the cached pool that differs only in `select` (the
    same training run kept the other way), when that pool holds exactly the teachers before it
    and no other process is building it."""
    manifest = _open_manifest(dataset, spec, folder)
    twin_spec = replace(spec, select=TWIN_SELECT[spec.select])
    twin_folder = cache_folder(dataset, twin_spec) if fill_twin else None
    train_classes = dataset.splits["train"]
    trained_on = run_facts(device)
    for index in range(len(manifest["teachers"]), spec.num_teachers):
        started = time.perf_counter()
        classes = teacher_classes(train_classes, spec.way, spec.seed, index)
        arch = spec.arch_of(index)
        both = pretrain_teacher_both(dataset, classes, arch, spec.settings(),
                                     derive_seed("teacher", spec.seed, index), device)
        facts = {"arch": arch, "class_ids": classes, "class_names": [dataset.class_names[c] for c in classes],
                 "train_seconds": round(time.perf_counter() - started, 3), "trained_on": trained_on}
        _commit_teacher(dataset, spec, folder, manifest, index, both[spec.select], facts)
        if twin_folder is not None:
            _fill_twin(dataset, twin_spec, twin_folder, index, both[twin_spec.select], facts)
        if on_teacher is not None:
            on_teacher(index + 1, spec.num_teachers)


def _open_manifest(dataset: ImageDataset, spec: PoolSpec, folder: Path) -> dict[str, Any]:
    """`folder`'s manifest (checked to hold this pool), or a new one."""
    folder.mkdir(parents=True, exist_ok=True)
    key = pool_key(dataset, spec)
    if not (folder / MANIFEST).is_file():
        return _new_manifest(dataset, spec, key)
    manifest = read_manifest(folder, dataset)
    _check_cached_key(folder, manifest, key)
    return manifest


def _commit_teacher(dataset: ImageDataset, spec: PoolSpec, folder: Path, manifest: dict[str, Any], index: int,
                    trained: TrainedTeacher, facts: dict[str, Any]) -> None:
    """Teacher `index`'s weights, then its manifest entry (with its regime indicators)."""
    file_name, sha = write_teacher(folder, index, trained.state)
    initial = initial_state(facts["arch"], spec.way, dataset.image_size, dataset.channels, spec.seed, index)
    manifest["teachers"].append({
        "file": file_name, "arch": facts["arch"], "class_ids": facts["class_ids"],
        "class_names": facts["class_names"], "heldout_acc": trained.heldout_acc, "best_epoch": trained.best_epoch,
        "train_seconds": facts["train_seconds"], "sha256": sha, "trained_on": facts["trained_on"],
        REGIME_FIELD: teacher_regime(trained.state, initial, trained.steps),
    })
    write_manifest(folder, manifest)


def _fill_twin(dataset: ImageDataset, spec: PoolSpec, folder: Path, index: int, trained: TrainedTeacher,
               facts: dict[str, Any]) -> None:
    with claimed(folder, pools_root()) as mine:  # never wait: its own builder may hold it
        if not mine:
            return
        try:
            manifest = _open_manifest(dataset, spec, folder)
        except UserError:  # a damaged or foreign twin: its own build says so when it is used
            return
        if len(manifest["teachers"]) == index:
            _commit_teacher(dataset, spec, folder, manifest, index, trained, facts)


def backfill_regime(dataset: ImageDataset, spec: PoolSpec, folder: Path) -> None:
    """Add the regime indicators to the teachers of a cached pool built before they existed
    (the inits are re-derived from the pool seed, the steps from the split and the best epoch);
    the manifest is rewritten atomically, once."""
    manifest = read_manifest(folder, dataset)
    missing = [(i, e) for i, e in enumerate(manifest["teachers"]) if REGIME_FIELD not in e]
    if not missing:
        return
    for index, entry in missing:
        final = load_file(str(folder / entry["file"]))
        initial = initial_state(entry["arch"], len(entry["class_ids"]), dataset.image_size, dataset.channels,
                                spec.seed, index)
        train_images = len(split_train_heldout(dataset, entry["class_ids"])[0])
        steps = steps_taken(train_images, spec.batch_size, spec.epochs, entry.get("best_epoch"), spec.select)
        entry[REGIME_FIELD] = teacher_regime(final, initial, steps)
    write_manifest(folder, manifest)


def _check_cached_key(folder: Path, manifest: dict[str, Any], key: str) -> None:
    if manifest.get("key") != key:
        raise pool_error(folder, f"{folder} holds a different pool (key {manifest.get('key')}, expected {key})")


def cache_folder(dataset: ImageDataset, spec: PoolSpec) -> Path:
    """Where the cached pool of (dataset, spec) lives: `cache_dir()/pools/<name>-<key>/`."""
    return pools_root() / f"{dataset.name}-{spec.arch}-{spec.way}way-{pool_key(dataset, spec)}"


def check_pool_source(dataset: ImageDataset | MultiDomainDataset, spec: PoolSpec) -> None:
    """Pre-flight: everything about the pool that can be checked without training or loading
    weights, as one-line UserErrors. `spec.path`: the manifest, read and checked against the
    dataset, the teacher count, and every used teacher file's tensor shapes (from its safetensors
    header). A cached pool: the same, on what the cache already holds (nothing when it is not
    built yet). A multi-domain dataset: each domain's pool."""
    if isinstance(dataset, MultiDomainDataset):
        for d, count in enumerate(domain_pool_counts(dataset, spec)):
            if count:
                check_pool_source(dataset.domains[d].source, replace(spec, num_teachers=count))
        return
    if spec.path:
        folder = Path(spec.path).expanduser()
        manifest = read_manifest(folder, dataset)
        used = len(select_teachers(manifest, folder, spec.num_teachers))
    else:
        folder = cache_folder(dataset, spec)
        if not (folder / MANIFEST).is_file():
            return
        manifest = read_manifest(folder, dataset)
        _check_cached_key(folder, manifest, pool_key(dataset, spec))
        used = min(len(manifest["teachers"]), spec.num_teachers)
    for index in range(used):
        check_teacher_file(folder, manifest, index)


def planned_pool_key(dataset: ImageDataset | MultiDomainDataset, spec: PoolSpec) -> str:
    """The key `obtain_pool(dataset, spec).key` will have, without training or loading weights
    (a `spec.path` pool's manifest is read and checked)."""
    if isinstance(dataset, MultiDomainDataset):
        counts = domain_pool_counts(dataset, spec)
        return _combined_key({d: planned_pool_key(dataset.domains[d].source, replace(spec, num_teachers=count))
                              for d, count in enumerate(counts) if count})
    if spec.path:
        folder = Path(spec.path).expanduser()
        manifest = read_manifest(folder, dataset)
        select_teachers(manifest, folder, spec.num_teachers)
        return manifest_key(manifest, spec.num_teachers)
    return pool_key(dataset, spec)


def obtain_pool(dataset: ImageDataset | MultiDomainDataset, spec: PoolSpec, device: torch.device | str = "cpu",
                on_teacher: Callable[[int, int], None] | None = None, fill_twin: bool = False) -> TeacherPool:
    """The pool a run uses: `spec.path` when given, else the cache (built or extended as needed;
    `fill_twin`: see `build_pool`)."""
    if isinstance(dataset, MultiDomainDataset):
        return _multidomain_pool(dataset, spec, device, on_teacher, fill_twin)
    if spec.path:
        return load_pool(Path(spec.path).expanduser(), spec.num_teachers, device, dataset=dataset)
    key = pool_key(dataset, spec)
    folder = cache_folder(dataset, spec)
    with exclusive(folder, pools_root(), f"the teacher pool {folder.name}"):  # one builder, however many jobs
        have = len(read_manifest(folder, dataset)["teachers"]) if (folder / MANIFEST).is_file() else 0
        if have < spec.num_teachers:
            build_pool(dataset, spec, folder, device, on_teacher, fill_twin)
        backfill_regime(dataset, spec, folder)
    pool = load_pool(folder, spec.num_teachers, device, key, dataset)
    pool.metadata["training_note"] = _note_training(pool)
    return pool


_NOTED: set[str] = set()  # notes already printed in this process (one per pool and setting)


def _training_setting(facts: Any) -> tuple[str, Any] | None:
    """What makes weights differ in the last bits: the CPU model and thread count, the GPU model."""
    if not isinstance(facts, dict) or not facts.get("device"):
        return None
    kind = str(facts["device"]).split(":")[0]
    return (kind, facts.get("device_name") if kind == "cuda" else (facts.get("device_name"), facts.get("num_threads")))


def _describe(setting: tuple[str, Any]) -> str:
    kind, detail = setting
    if kind == "cpu":
        name, threads = detail
        return f"cpu ({str(name).removeprefix('cpu: ').split(',')[0]}) with {threads} thread(s)"
    return f"{kind} ({detail})"


def _note_training(pool: TeacherPool) -> str | None:
    """One stderr line when some cached teachers were trained under another thread count or
    device than this run uses (a fresh build here would differ in the last bits); the line, or None."""
    now = _training_setting(pool.metadata.get("run_on"))
    trained = [_training_setting(f) for f in pool.metadata.get("teachers_trained_on", [])]
    groups: list[list[Any]] = []  # [first, last, setting] of consecutive teachers
    for index, setting in enumerate(trained):
        if setting is None or now is None or setting == now:
            continue
        if groups and groups[-1][1] == index - 1 and groups[-1][2] == setting:
            groups[-1][1] = index
        else:
            groups.append([index, index, setting])
    if not groups:
        return None
    parts = []
    for n, (first, last, setting) in enumerate(groups):
        who = f"teacher {first} was" if first == last else f"teachers {first}-{last} were"
        parts.append(f"{who} trained on {_describe(setting)}" if n == 0 else f"{who.rsplit(' ', 1)[0]} on "
                     f"{_describe(setting)}")
    line = (f"pool {pool.path}: {', '.join(parts)}, this run uses {_describe(now)}; "
            "results can differ in the last digits from a run with the same settings elsewhere")
    if line not in _NOTED:
        _NOTED.add(line)
        note(line)
    return line


def _refuse_path(data: MultiDomainDataset, spec: PoolSpec) -> None:
    if spec.path:
        raise UserError(f"pool.path cannot serve the multi-domain dataset '{data.name}': its teachers "
                        "come from each domain's own pool; leave pool.path null")


def _domain_picks(data: MultiDomainDataset, spec: PoolSpec) -> list[tuple[int, int]]:
    """(domain, position in that domain's own pool) of each teacher, drawn from (seed, index)."""
    _refuse_path(data, spec)
    picks, counts = [], [0] * len(data.domains)
    for index in range(spec.num_teachers):
        domain = derive_seed("teacher-domain", spec.seed, index) % len(data.domains)
        picks.append((domain, counts[domain]))
        counts[domain] += 1
    return picks


def domain_pool_counts(data: MultiDomainDataset, spec: PoolSpec) -> list[int]:
    """How many teachers of a multi-domain pool each domain's own pool supplies."""
    counts = [0] * len(data.domains)
    for domain, _ in _domain_picks(data, spec):
        counts[domain] += 1
    return counts


def _combined_key(keys: dict[int, str]) -> str:
    """A multi-domain pool's key, from its domains' pool keys."""
    return hashlib.sha256("+".join(f"{d}:{k}" for d, k in sorted(keys.items())).encode()).hexdigest()[:16]


def _multidomain_pool(data: MultiDomainDataset, spec: PoolSpec, device: torch.device | str,
                      on_teacher: Callable[[int, int], None] | None, fill_twin: bool) -> TeacherPool:
    """Teacher i comes from domain d(i), drawn from (seed, i) alone, and is the next teacher of
    that domain's own cached pool (trained on its images at its size and statistics); it is
    wrapped to take the shared image space, and its class ids move into the shared label space."""
    picks, counts = _domain_picks(data, spec), domain_pool_counts(data, spec)
    pools = {d: obtain_pool(data.domains[d].source, replace(spec, num_teachers=count), device, fill_twin=fill_twin)
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
    key = _combined_key({d: p.key for d, p in pools.items()})
    notes = [p.metadata.get("training_note") for p in pools.values()]
    return TeacherPool(teachers, data.name, data.image_size, data.channels, data.mean, data.std,
                       next(iter(pools.values())).path, key,
                       {"domains": {data.domains[d].name: {"teachers": counts[d], "key": p.key,
                                                           "path": str(p.path)} for d, p in pools.items()},
                        "run_on": run_facts(device), "training_note": "; ".join(n for n in notes if n) or None,
                        "regime": {data.domains[d].name: p.metadata.get("regime") for d, p in pools.items()}})


__all__ = ["TWIN_SELECT", "PoolSpec", "Teacher", "TeacherPool", "backfill_regime", "build_pool", "cache_folder",
           "check_pool_source", "domain_pool_counts", "load_pool", "obtain_pool", "planned_pool_key", "pool_key"]
