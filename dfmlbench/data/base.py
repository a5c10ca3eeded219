"""The in-memory dataset every method and evaluation reads: uint8 images, labels, splits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

SPLITS = ("train", "val", "test")


@dataclass
class ImageDataset:
    """A labelled image set held as uint8 tensors, with its meta-train/val/test class split.

    Class ids are absolute: an index into `class_names`, shared by teachers, episodes and
    (later) memory banks, so a recovered image can always be traced to its class.
    """

    name: str
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,), class ids
    class_names: list[str]
    splits: dict[str, list[int]]  # split name -> sorted class ids
    mean: tuple[float, ...]
    std: tuple[float, ...]
    notes: str = ""
    _by_class: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        labels = self.labels.numpy()
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(len(self.class_names) + 1))
        self._by_class = {c: order[bounds[c]:bounds[c + 1]] for c in range(len(self.class_names))}

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def indices_of(self, class_id: int) -> np.ndarray:
        """Image indices of one class, in the dataset's fixed (sorted) order."""
        return self._by_class[class_id]

    def fingerprint(self) -> str:
        """A content hash: caches keyed by it are invalidated when the data changes."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(self.name.encode())
            digest.update(np.ascontiguousarray(self.images.numpy()).tobytes())
            digest.update(self.labels.numpy().tobytes())
            digest.update("\n".join(self.class_names).encode())
            for split in SPLITS:
                digest.update(np.asarray(self.splits[split], dtype=np.int64).tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def normalize(self, batch: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 images -> float tensor normalised with the dataset's mean and std."""
        x = batch.to(device=device, dtype=torch.float32).div_(255.0)
        mean = torch.tensor(self.mean, device=device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=device).view(-1, 1, 1)
        return (x - mean) / std


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units (computed on meta-train)."""
    x = images.to(torch.float64) / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def images_of_classes(images: torch.Tensor, labels: torch.Tensor,
                      class_ids: list[int]) -> torch.Tensor:
    mask = torch.isin(labels, torch.as_tensor(class_ids, dtype=labels.dtype))
    return images[mask]
