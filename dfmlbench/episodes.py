"""Fixed, seeded few-shot episodes: drawn once per (dataset, split, way, shot, query, count, seed)
and shared by every method, so every comparison between methods is paired."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from dfmlbench.data.base import ImageDataset
from dfmlbench.errors import UserError


@dataclass(frozen=True)
class EpisodeSet:
    """`indices[e]` holds episode e's image indices, shot-major as the official sampler lays
    them out: position p has class p % way; the first way*shot are the support."""

    dataset: str
    split: str
    way: int
    shot: int
    query: int
    seed: int
    classes: np.ndarray  # int64 (count, way): absolute class ids, in relative-label order
    indices: np.ndarray  # int64 (count, way * (shot + query))

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def support_size(self) -> int:
        return self.way * self.shot

    def labels(self) -> torch.Tensor:
        """Relative labels of one episode: arange(way) repeated shot + query times."""
        return torch.arange(self.way).repeat(self.shot + self.query)

    def sha(self) -> str:
        """Identifies the exact episodes, so records can prove they were tested on the same ones."""
        return hashlib.sha256(self.indices.tobytes()).hexdigest()[:16]


def _episode_seed(dataset: ImageDataset, split: str, way: int, shot: int, query: int,
                  count: int, seed: int) -> list[int]:
    key = f"{dataset.fingerprint()}|{split}|{way}|{shot}|{query}|{count}|{seed}"
    return [int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")]


def make_episodes(dataset: ImageDataset, split: str, way: int, shot: int, query: int,
                  count: int, seed: int = 0) -> EpisodeSet:
    """Draw `count` episodes: `way` random classes of the split, then shot+query random images each."""
    class_ids = np.asarray(dataset.splits[split])
    if len(class_ids) < way:
        raise UserError(f"{dataset.name} {split} split has {len(class_ids)} classes, "
                        f"fewer than way={way}; lower the way")
    need = shot + query
    smallest = min(len(dataset.indices_of(int(c))) for c in class_ids)
    if smallest < need:
        raise UserError(f"{dataset.name} {split}: a class has only {smallest} images but an episode "
                        f"needs shot+query={need}; lower protocol.query")
    rng = np.random.default_rng(_episode_seed(dataset, split, way, shot, query, count, seed))
    classes = np.empty((count, way), dtype=np.int64)
    indices = np.empty((count, way * need), dtype=np.int64)
    for e in range(count):
        chosen = rng.permutation(class_ids)[:way]
        per_class = np.stack([rng.permutation(dataset.indices_of(int(c)))[:need] for c in chosen])
        classes[e] = chosen
        indices[e] = per_class.T.reshape(-1)  # shot-major: the class index cycles fastest
    return EpisodeSet(dataset.name, split, way, shot, query, seed, classes, indices)
