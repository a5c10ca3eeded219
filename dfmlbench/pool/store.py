"""A teacher pool on disk: one safetensors file per teacher plus `manifest.json`.

Any folder with this layout is a pool ("bring your own models"). Loading never unpickles:
weights are safetensors, metadata is JSON, and each file's sha256 is checked.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from dfmlbench.errors import UserError
from dfmlbench.models import ARCHITECTURES, build_model
from dfmlbench.paths import cache_dir, write_bytes_atomic, write_json_atomic
from dfmlbench.pool.regime import pool_regime

if TYPE_CHECKING:
    from dfmlbench.data.base import ImageDataset

MANIFEST = "manifest.json"
FORMAT = "dfmlbench-pool"
FORMAT_VERSION = 1
TEACHER_FIELDS = ("file", "arch", "class_ids", "class_names", "heldout_acc", "sha256")
MANIFEST_FIELDS = ("image_size", "in_channels", "mean", "std", "teachers")
README_SECTION = "see README, 'Teacher pools, and bringing your own models'"
STATS_TOLERANCE = 1e-3  # pool vs dataset mean/std (the datasets round theirs to 4 decimals)


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


# --- what is wrong, and how to fix it ------------------------------------------------------------

def pools_root() -> Path:
    """Where cached pools live: `cache_dir()/pools/<name>-<key>/`."""
    return cache_dir() / "pools"


def is_cached_pool(folder: Path) -> bool:
    """Whether `folder` is one of dfmlbench's cached pools (else a brought-in `pool.path`)."""
    try:
        Path(folder).expanduser().resolve().relative_to(pools_root().expanduser().resolve())
    except ValueError:
        return False
    return True


def repair_hint(folder: Path) -> str:
    """How to get a sound pool again: a cached pool is retrained, a brought-in one is fixed."""
    if is_cached_pool(folder):
        quoted = f"'{folder}'" if "'" not in str(folder) else json.dumps(str(folder))
        return f"rebuild it with: rm -r {quoted}  (the next run retrains it)"
    return f"fix the pool folder {folder} ({README_SECTION})"


def pool_error(folder: Path, what: str) -> UserError:
    """One line: what is wrong, then how to fix it (newlines from foreign messages folded)."""
    return UserError(re.sub(r"\s*[\r\n]+\s*", " ", f"{what}; {repair_hint(folder)}"))


def _show(value: Any) -> str:
    """A manifest value as the message shows it: numbers bare, anything else with its JSON kind."""
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    kind = {bool: "boolean", str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)
    text = json.dumps(value) if isinstance(value, (bool, str, list, dict)) else repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({kind})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(value: Any) -> str:
    return "[" + ", ".join(f"{v:g}" if _is_number(v) else repr(v) for v in value) + "]"


# --- the manifest ---------------------------------------------------------------------------------

def read_manifest(folder: Path, dataset: "ImageDataset | None" = None) -> dict[str, Any]:
    """The manifest of the pool in `folder`, parsed and checked for shape and meaning (and, given
    `dataset`, against it); any problem is one line naming the file, teacher, field and value."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"no teacher pool at {folder}: {MANIFEST} is missing; point pool.path at a "
                        f"folder written by dfmlbench ({README_SECTION})")
    try:
        manifest = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise pool_error(folder, f"{path} is not text (not UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise pool_error(folder, f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    validate_manifest(manifest, folder, dataset)
    return manifest


def validate_manifest(manifest: Any, folder: Path, dataset: "ImageDataset | None" = None) -> None:
    """The checks of `read_manifest` on a parsed manifest (the one place they live)."""
    folder = Path(folder)
    path = folder / MANIFEST

    def bad(what: str) -> UserError:
        return pool_error(folder, f"{path}: {what}")

    if not isinstance(manifest, dict):
        raise bad(f"must hold a JSON object, got {type(manifest).__name__}")
    for key in MANIFEST_FIELDS:
        if key not in manifest:
            raise bad(f"lacks the field '{key}'")
    version = manifest.get("format_version", FORMAT_VERSION)
    if not _is_int(version) or version > FORMAT_VERSION:
        raise bad(f"format_version is {_show(version)}; this dfmlbench reads format_version "
                  f"<= {FORMAT_VERSION} (upgrade dfmlbench)")
    if "key" in manifest and not isinstance(manifest["key"], str):
        raise bad(f"key is {_show(manifest['key'])}, must be a string")
    for key in ("image_size", "in_channels"):
        value = manifest[key]
        if not _is_int(value) or value < 1:
            raise bad(f"{key} is {_show(value)}, must be a positive integer")
    channels = manifest["in_channels"]
    for key in ("mean", "std"):
        values = manifest[key]
        if not isinstance(values, list):
            raise bad(f"{key} is {_show(values)}, must be a list of {channels} numbers (one per channel)")
        if len(values) != channels:
            raise bad(f"{key} has {len(values)} values but in_channels is {channels}; give one per channel")
        for i, value in enumerate(values):
            if not _is_number(value):
                raise bad(f"{key}[{i}] is {_show(value)}, must be a number")
            if key == "std" and value <= 0:
                raise bad(f"std[{i}] is {value!r}, each std must be > 0 (images are divided by it)")
    if not isinstance(manifest["teachers"], list):
        raise bad(f"teachers is {_show(manifest['teachers'])}, must be a list of teacher entries")

    if dataset is not None:
        _check_against_dataset(manifest, dataset, bad)
    for index, entry in enumerate(manifest["teachers"]):
        _check_teacher_entry(folder, entry, index, dataset, bad)


def _check_against_dataset(manifest: dict[str, Any], dataset: "ImageDataset", bad: Any) -> None:
    size, channels = manifest["image_size"], manifest["in_channels"]
    if size != dataset.image_size or channels != dataset.channels:
        raise bad(f"the pool expects {channels}x{size}px images but {dataset.name} has "
                  f"{dataset.channels}x{dataset.image_size}px; use a pool trained on {dataset.name}")
    mean, std = manifest["mean"], manifest["std"]
    if any(abs(a - b) > STATS_TOLERANCE for a, b in zip([*mean, *std], [*dataset.mean, *dataset.std])):
        raise bad(f"the pool's statistics (mean {_numbers(mean)}, std {_numbers(std)}) differ from "
                  f"{dataset.name}'s (mean {_numbers(dataset.mean)}, std {_numbers(dataset.std)}); "
                  "methods normalise recovered images with the pool's and the meta-test with the "
                  f"dataset's, so they must agree: teachers must be trained on {dataset.name} images "
                  "normalised with its statistics, and mean/std must say so")


def _split_of(dataset: "ImageDataset", class_id: int) -> str:
    return next(split for split, ids in dataset.splits.items() if class_id in ids)


def _check_teacher_entry(folder: Path, entry: Any, index: int, dataset: "ImageDataset | None",
                         bad: Any) -> None:
    if not isinstance(entry, dict):
        raise bad(f"teacher {index} is {_show(entry)}, must be an object with the fields "
                  f"{', '.join(TEACHER_FIELDS)}")
    missing = [f for f in TEACHER_FIELDS if f not in entry]
    if missing:
        raise bad(f"teacher {index} lacks the field '{missing[0]}'")

    def field_bad(name: str, what: str) -> UserError:
        return bad(f"teacher {index} field '{name}' {what}")

    file = entry["file"]
    if not isinstance(file, str) or not file:
        raise field_bad("file", f"is {_show(file)}, must be the file name of its weights")
    if os.path.isabs(file) or ".." in Path(file).parts:
        raise field_bad("file", f"is {file!r}, must name a file inside the pool folder")
    if entry["arch"] not in ARCHITECTURES:
        raise field_bad("arch", f"is {_show(entry['arch'])}, use one of {', '.join(ARCHITECTURES)}")
    sha = entry["sha256"]
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise field_bad("sha256", f"is {_show(sha)}, must be the file's sha256 as 64 lowercase hex digits")

    ids, names = entry["class_ids"], entry["class_names"]
    if not isinstance(ids, list) or not ids:
        raise field_bad("class_ids", f"is {_show(ids)}, must be a non-empty list of the dataset's class ids")
    classes = len(dataset.class_names) if dataset is not None else None
    dataset_name = dataset.name if dataset is not None else ""
    seen: set[int] = set()
    for i, value in enumerate(ids):
        if not _is_int(value):
            raise field_bad("class_ids", f"holds {_show(value)} at position {i}; class ids must be integers")
        if value < 0:
            raise field_bad("class_ids", f"holds {value} at position {i}; class ids must be >= 0")
        if classes is not None and value >= classes:
            raise field_bad("class_ids", f"holds {value} at position {i}, outside {dataset_name} "
                                         f"(class ids 0-{classes - 1})")
        split = _split_of(dataset, value) if dataset is not None else "train"
        if split != "train":  # a teacher that saw meta-val/test classes leaks them into the evaluation
            raise field_bad("class_ids", f"holds {value} at position {i}, a class of {dataset_name}'s {split} "
                                         "split; teachers must be trained on meta-train classes only")
        if value in seen:
            raise field_bad("class_ids", f"holds {value} twice; each output unit must be a different class")
        seen.add(value)
    if not isinstance(names, list) or any(not isinstance(n, str) for n in names):
        raise field_bad("class_names", f"is {_show(names)}, must be a list of strings")
    if len(names) != len(ids):
        raise field_bad("class_names", f"has {len(names)} names but class_ids has {len(ids)} ids; "
                                       "give one name per class id, in the same order")
    acc = entry["heldout_acc"]
    if not _is_number(acc) or not 0 <= acc <= 100:
        raise field_bad("heldout_acc", f"is {_show(acc)}, must be a number in [0, 100] "
                                       "(held-out accuracy in %)")


def manifest_key(manifest: dict[str, Any], limit: int | None = None) -> str:
    """A brought-in pool's key: its manifest's `key`, else a hash of the sha256 of the teachers
    used (the first `limit`), so the same weights always give the same key."""
    if manifest.get("key"):
        return str(manifest["key"])
    shas = [entry["sha256"] for entry in manifest["teachers"][:limit]]
    return hashlib.sha256(json.dumps(shas).encode()).hexdigest()[:16]


def select_teachers(manifest: dict[str, Any], folder: Path, limit: int | None) -> list[dict[str, Any]]:
    entries = manifest["teachers"]
    if limit is not None and limit > len(entries):
        raise UserError(f"pool at {folder} has {len(entries)} teachers, {limit} were asked for; "
                        "lower pool.num_teachers")
    return entries if limit is None else entries[:limit]


# --- a teacher file's tensors, from its header ----------------------------------------------------

@functools.lru_cache(maxsize=64)
def expected_shapes(arch: str, num_classes: int, image_size: int, in_channels: int
                    ) -> dict[str, tuple[int, ...]]:
    """The state-dict tensor shapes of a teacher, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = build_model(arch, num_classes, image_size, in_channels)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def check_teacher_file(folder: Path, manifest: dict[str, Any], index: int) -> Path:
    """Teacher `index`'s file exists, is safetensors, and holds exactly the tensors, of exactly
    the shapes, that its manifest entry implies; read from the header alone (no weights loaded)."""
    folder = Path(folder)
    entry = manifest["teachers"][index]
    path = folder / entry["file"]
    if not path.is_file():
        raise pool_error(folder, f"teacher file {path} (teacher {index} of {folder / MANIFEST}) is missing")
    try:
        with safe_open(str(path), "pt") as handle:
            found = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise pool_error(folder, f"teacher file {path} is not a safetensors file ({exc}); teachers are "
                            "read only as safetensors (save with safetensors.torch.save_file)") from None
    arch, size, channels = entry["arch"], manifest["image_size"], manifest["in_channels"]
    units = len(entry["class_ids"])
    where = f"teacher file {path} (teacher {index}, {arch})"
    try:
        expected = expected_shapes(arch, units, size, channels)
    except ValueError as exc:  # e.g. Conv4 below 16 px
        raise pool_error(folder, f"{folder / MANIFEST}: teacher {index}: {exc}") from None
    for name, shape in expected.items():
        if name not in found:
            raise pool_error(folder, f"{where} lacks the tensor '{name}' that a {arch} has"
                                f"{_prefix_hint(name, found)}; is arch right?")
        if found[name] != shape:
            hint = _shape_hint(name, found[name], shape, entry, manifest)
            raise pool_error(folder, f"{where}: tensor '{name}' has shape {list(found[name])} but the manifest "
                                     f"implies {list(shape)} ({hint})")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise pool_error(folder, f"{where} holds the tensor '{extra[0]}' that a {arch} lacks "
                            f"({len(extra)} such); is arch right?")
    return path


def _prefix_hint(name: str, found: dict[str, Any]) -> str:
    for other in found:
        if other.endswith("." + name):
            prefix = other[: -len(name)]
            return (f" (it has '{other}': save the bare model's state_dict, without the prefix "
                    f"'{prefix}')")
    return ""


def _shape_hint(name: str, found: tuple[int, ...], shape: tuple[int, ...], entry: dict[str, Any],
                manifest: dict[str, Any]) -> str:
    units, size, channels = len(entry["class_ids"]), manifest["image_size"], manifest["in_channels"]
    if name.startswith("classifier.") and found and shape and found[0] != shape[0]:
        return (f"the file has {found[0]} output units but class_ids lists {units} classes: list one "
                "class id (and name) per output unit, in order")
    if name == "classifier.weight" and entry["arch"] == "conv4" and len(found) == 2:
        side = size // 16
        width = shape[1] // (side * side)
        cells = found[1] // width if width and found[1] % width == 0 else 0
        root = math.isqrt(cells)
        fits = f": the file fits image_size {16 * root}-{16 * root + 15}" if root and root * root == cells else ""
        return (f"image_size {size} gives a conv4 head of {shape[1]} inputs, the file's has {found[1]}"
                f"{fits}; set image_size to the size the teachers were trained at")
    if len(found) == 4 and len(shape) == 4 and found[1] != shape[1] and shape[1] == channels:
        return (f"the file takes {found[1]} input channels, the manifest says in_channels {channels}; "
                "set in_channels (and mean/std) to what the teachers were trained on")
    return f"arch {entry['arch']}, {units} classes, {channels}x{size}px: is arch right?"


# --- loading --------------------------------------------------------------------------------------

def run_facts(device: torch.device | str) -> dict[str, Any]:
    """What a run trains or computes on: recorded per teacher (`trained_on`) and per pool (`run_on`)."""
    from dfmlbench.records import device_name

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return {"device": str(device), "device_name": device_name(device), "num_threads": torch.get_num_threads()}


def load_pool(folder: Path, limit: int | None = None, device: torch.device | str = "cpu",
              key: str = "", dataset: "ImageDataset | None" = None) -> TeacherPool:
    """Load the first `limit` teachers (all when None), verified and frozen, in eval mode.
    Given `dataset`, the manifest is also checked against it (class ids, image space, statistics)."""
    folder = Path(folder)
    manifest = read_manifest(folder, dataset)
    entries = select_teachers(manifest, folder, limit)
    teachers = []
    for index, entry in enumerate(entries):
        path = folder / entry["file"]
        if not path.is_file():
            raise pool_error(folder, f"teacher file {path} (teacher {index} of {folder / MANIFEST}) is missing")
        if sha256_of(path) != entry["sha256"]:
            raise pool_error(folder, f"teacher file {path} does not match its sha256 in {MANIFEST} "
                                "(the file is corrupt or was replaced)")
        check_teacher_file(folder, manifest, index)
        try:
            state = load_file(str(path))
        except SafetensorError as exc:
            raise pool_error(folder, f"cannot read {path} as safetensors: {exc}") from None
        model = build_model(entry["arch"], len(entry["class_ids"]), manifest["image_size"],
                            manifest["in_channels"])
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # shapes were checked from the header; kept as a safety net
            raise pool_error(folder, f"{path} does not fit a {entry['arch']}: {exc}") from None
        model.to(device).eval().requires_grad_(False)
        teachers.append(Teacher(index, entry["arch"], model, list(entry["class_ids"]),
                                list(entry["class_names"]), float(entry["heldout_acc"]),
                                entry["sha256"]))
    metadata = {k: v for k, v in manifest.items() if k != "teachers"}
    metadata["regime"] = pool_regime(entries, [t.model.state_dict() for t in teachers])
    metadata["run_on"] = run_facts(device)
    metadata["teachers_trained_on"] = [entry.get("trained_on") for entry in entries]
    return TeacherPool(teachers, manifest.get("dataset", "unknown"), manifest["image_size"],
                       manifest["in_channels"], tuple(manifest["mean"]), tuple(manifest["std"]),
                       folder, key or manifest_key(manifest, limit), metadata)
