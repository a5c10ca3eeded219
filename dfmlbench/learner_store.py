"""A cell's fitted learners saved beside its record (`<stem>.learner.safetensors`), so another
meta-test protocol (`evaluate`) needs no refit. Safetensors only: a saved learner is data, and
it loads without unpickling. One file holds the learner and its diagnostic extras (the last
step's meta-learner), each under its name, with how it adapts in the file's metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from dfmlbench.errors import UserError
from dfmlbench.learner import Learner
from dfmlbench.models import build_model
from dfmlbench.paths import write_bytes_atomic

MAIN_LEARNER = "learner"
SUFFIX = ".learner.safetensors"


@dataclass(frozen=True)
class Saved:
    file: str | None  # the file name beside the record, or None
    reason: str | None  # why nothing was saved


def learner_path(stem: Path) -> Path:
    return stem.with_suffix(SUFFIX)


def save_learners(stem: Path, learners: dict[str, Learner]) -> Saved:
    """Write the learners' weights and adaptation flags atomically; a learner whose init
    differs per episode (Random's re-init, DRO's per-task samples) is a recipe, not weights,
    and is not saved (its cell must be run again for another protocol)."""
    per_episode = [name for name, learner in learners.items() if learner.init_for_episode is not None]
    if per_episode:
        return Saved(None, f"{', '.join(per_episode)}: a fresh init per episode, not one set of weights")
    tensors: dict[str, torch.Tensor] = {}
    described: dict[str, Any] = {}
    for name, learner in learners.items():
        model = learner.model
        described[name] = {"arch": model.dfmlbench_arch, "adapt_steps": learner.adapt_steps,
                           "head_matching": learner.head_matching, "description": learner.description}
        for key, value in model.state_dict().items():
            tensors[f"{name}/{key}"] = value.detach().to("cpu").contiguous()
    path = learner_path(stem)
    write_bytes_atomic(path, safetensors_bytes(tensors, metadata={"learners": json.dumps(described)}))
    return Saved(path.name, None)


def load_learners(stem: Path, way: int, image_size: int, in_channels: int,
                  device: torch.device | str) -> dict[str, Learner]:
    """The learners `save_learners` wrote for this stem, rebuilt on `device`."""
    path = learner_path(stem)
    try:
        with safe_open(str(path), "pt", device="cpu") as handle:
            described = json.loads((handle.metadata() or {})["learners"])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (OSError, SafetensorError, KeyError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read the saved learner {path} ({type(exc).__name__}); run the cell again "
                        "with `run --force` to refit it") from None
    learners = {}
    for name, about in described.items():
        model = build_model(about["arch"], way, image_size, in_channels, batch_stat_bn=True, zero_head_bias=True)
        prefix = f"{name}/"
        model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        learners[name] = Learner(model.to(device), adapt_steps=about["adapt_steps"],
                                 head_matching=about["head_matching"], description=about["description"])
    return learners
