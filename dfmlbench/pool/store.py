"""A teacher pool on disk: one safetensors file per teacher plus `manifest.json`.

Any folder with this layout is a pool ("bring your own models"). Loading never unpickles:
weights are safetensors, metadata is JSON, and each file's sha256 is checked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from dfmlbench.errors import UserError
from dfmlbench.models import ARCHITECTURES, build_model
from dfmlbench.paths import write_bytes_atomic, write_json_atomic

MANIFEST = "manifest.json"
FORMAT = "dfmlbench-pool"
FORMAT_VERSION = 1
TEACHER_FIELDS = ("file", "arch", "class_ids", "class_names", "heldout_acc", "sha256")


@dataclass
class Teacher:
    """A frozen pre-trained classifier and what it was trained on (no images)."""

    index: int
    arch: str
    model: nn.Module
    class_ids: list[int]  # absolute dataset class ids, in the order of its output units
    class_names: list[str]
    heldout_acc: float
    sha256: str


@dataclass
class TeacherPool:
    """The only thing a DFML method learns from."""

    teachers: list[Teacher]
    dataset: str
    image_size: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    path: Path
    key: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.teachers)

    def __iter__(self) -> Iterator[Teacher]:
        return iter(self.teachers)

    def __getitem__(self, index: int) -> Teacher:
        return self.teachers[index]

    @property
    def architectures(self) -> list[str]:
        return sorted({t.arch for t in self.teachers})

    def single_architecture(self, method: str) -> str:
        """The pool's one architecture; a one-line error for methods that fuse weights."""
        if len(self.architectures) != 1:
            raise UserError(f"{method} needs teachers of one architecture, the pool mixes "
                            f"{', '.join(self.architectures)}; use a single-architecture pool")
        return self.architectures[0]

    def most_accurate(self) -> Teacher:
        """The teacher with the highest recorded held-out accuracy (ties: lowest index)."""
        return max(self.teachers, key=lambda t: (t.heldout_acc, -t.index))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_teacher(folder: Path, index: int, state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """Write one teacher's weights atomically; returns (file name, sha256)."""
    name = f"teacher_{index:03d}.safetensors"
    data = save({k: v.contiguous() for k, v in state.items()})
    write_bytes_atomic(folder / name, data)
    return name, hashlib.sha256(data).hexdigest()


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(folder / MANIFEST, manifest)


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"no teacher pool at {folder}: {MANIFEST} is missing; "
                        "point pool.path at a folder written by dfmlbench (see README, 'Bring your own models')")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or rebuild the pool") from None
    for key in ("image_size", "in_channels", "mean", "std", "teachers"):
        if key not in manifest:
            raise UserError(f"{path} lacks the field '{key}'; see README, 'Bring your own models'")
    for i, entry in enumerate(manifest["teachers"]):
        missing = [f for f in TEACHER_FIELDS if f not in entry]
        if missing:
            raise UserError(f"{path}: teacher {i} lacks the field '{missing[0]}'")
        if entry["arch"] not in ARCHITECTURES:
            raise UserError(f"{path}: teacher {i} has unknown arch '{entry['arch']}'; "
                            f"use one of {', '.join(ARCHITECTURES)}")
    return manifest


def load_pool(folder: Path, limit: int | None = None, device: torch.device | str = "cpu",
              key: str = "") -> TeacherPool:
    """Load the first `limit` teachers (all when None), verified and frozen, in eval mode."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    entries = manifest["teachers"]
    if limit is not None:
        if limit > len(entries):
            raise UserError(f"pool at {folder} has {len(entries)} teachers, {limit} were asked for; "
                            "lower pool.num_teachers")
        entries = entries[:limit]
    teachers = []
    for index, entry in enumerate(entries):
        path = folder / entry["file"]
        if not path.is_file():
            raise UserError(f"teacher file {path} is missing; rebuild the pool or fix {MANIFEST}")
        if sha256_of(path) != entry["sha256"]:
            raise UserError(f"teacher file {path} does not match its sha256 in {MANIFEST}; "
                            "the file is corrupt or was replaced: rebuild the pool")
        try:
            state = load_file(str(path))
        except SafetensorError as exc:
            raise UserError(f"cannot read {path} as safetensors: {exc}") from None
        model = build_model(entry["arch"], len(entry["class_ids"]), manifest["image_size"],
                            manifest["in_channels"])
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise UserError(f"{path} does not fit a {entry['arch']}: {first}") from None
        model.to(device).eval().requires_grad_(False)
        teachers.append(Teacher(index, entry["arch"], model, [int(c) for c in entry["class_ids"]],
                                list(entry["class_names"]), float(entry["heldout_acc"]),
                                entry["sha256"]))
    return TeacherPool(teachers, manifest.get("dataset", "unknown"), int(manifest["image_size"]),
                       int(manifest["in_channels"]), tuple(manifest["mean"]), tuple(manifest["std"]),
                       folder, key or manifest.get("key", ""),
                       {k: v for k, v in manifest.items() if k != "teachers"})
