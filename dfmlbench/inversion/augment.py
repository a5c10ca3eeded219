"""Augmentation of generated images before a teacher or student sees them (free.md §2).

RandomCrop(size, padding 4, zero fill) -> RandomHorizontalFlip(0.5) -> Normalize. torchvision
applied to a whole batched tensor draws one crop offset and one flip for the whole batch: that
is the official behaviour (`granularity="batch"`); `"sample"` draws them per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class GeneratedImageAugment:
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], padding: int = 4,
                 granularity: str = "batch") -> None:
        if granularity not in ("batch", "sample"):
            raise ValueError(f"granularity must be 'batch' or 'sample', got {granularity!r}")
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.padding = padding
        self.granularity = granularity

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images.device)) / self.std.to(images.device)

    def __call__(self, images: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        """images: [0, 1] float (..., C, H, W) -> augmented, normalised; differentiable."""
        shape = images.shape
        x = images.reshape(-1, *shape[-3:])
        size, pad = shape[-1], self.padding
        padded = F.pad(x, (pad, pad, pad, pad))
        count = 1 if self.granularity == "batch" else len(x)
        offsets = torch.randint(0, 2 * pad + 1, (count, 2), generator=rng)
        flips = torch.rand(count, generator=rng) < 0.5
        if count == 1:
            top, left = offsets[0].tolist()
            out = padded[..., top:top + size, left:left + size]
            out = out.flip(-1) if flips[0] else out
        else:
            out = torch.stack([
                (p[..., t:t + size, l:l + size].flip(-1) if f else p[..., t:t + size, l:l + size])
                for p, (t, l), f in zip(padded, offsets.tolist(), flips.tolist())])
        return self.normalize(out).reshape(shape)


def random_roll(images: torch.Tensor, max_shift: int, rng: torch.Generator | None = None) -> torch.Tensor:
    """DeepInversion's jitter: one random cyclic shift in {-max_shift..max_shift}^2 for the batch."""
    dy, dx = (torch.randint(-max_shift, max_shift + 1, (2,), generator=rng)).tolist()
    return torch.roll(images, shifts=(dy, dx), dims=(-2, -1))
