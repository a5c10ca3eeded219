"""Conv4: four [Conv3x3(32, bias) -> BN -> ReLU -> MaxPool2] blocks and a linear head (free.md §1).

Each block max-pools before its ReLU: ReLU and max commute (both only select values), so the
block computes the same function with the same gradients, while the ReLU and its backward
(and, in second-order MAML, its double backward) touch a quarter of the elements. Measured:
about 13% of a second-order replay task (docs/performance.md)."""

from __future__ import annotations

import torch
from torch import nn


def conv_block(in_channels: int, out_channels: int, track_running_stats: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True),
        nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats),
        nn.MaxPool2d(2),  # before the ReLU: the same function, a quarter of the ReLU's work
        nn.ReLU(inplace=False),
    )


class Conv4(nn.Module):
    """The meta-learner and teacher backbone of every DFML codebase.

    With `track_running_stats=False` BN always normalises with the current batch, as the
    official "MAML-mode" models do at meta-train and meta-test (transductive BN).
    """

    def __init__(self, num_classes: int = 5, image_size: int = 32, in_channels: int = 3,
                 width: int = 32, track_running_stats: bool = True, any_size: bool = False) -> None:
        super().__init__()
        # any_size: a global max-pool after the blocks and a width-d head, so one model takes
        # 32 and 84 px inputs (the multi-domain meta-learner, free.md §10).
        self.any_size = any_size
        self.features = nn.Sequential(
            conv_block(in_channels, width, track_running_stats),
            *(conv_block(width, width, track_running_stats) for _ in range(3)),
        )
        side = image_size
        for _ in range(4):
            side //= 2  # MaxPool2d floors: 84 -> 42 -> 21 -> 10 -> 5
        if side < 1:
            raise ValueError(f"Conv4 needs images of at least 16 px, got {image_size}")
        self.classifier = nn.Linear(width if any_size else width * side * side, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        return features.amax(dim=(-2, -1)) if self.any_size else features.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
