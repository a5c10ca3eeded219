"""ResNet-10/18 of the FREE code (free.md §1): 3x3 stem without ReLU or max-pool, SimpleBlocks."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2)}


class SimpleBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a (1x1 conv + BN when the shape changes) shortcut, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 track_running_stats: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, depth: str = "resnet10", num_classes: int = 5, in_channels: int = 3,
                 track_running_stats: bool = True) -> None:
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"unknown ResNet depth {depth!r}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(STAGE_WIDTHS[0], track_running_stats=track_running_stats),
        )
        blocks: list[nn.Module] = []
        channels = STAGE_WIDTHS[0]
        for stage, (width, count) in enumerate(zip(STAGE_WIDTHS, BLOCKS_PER_STAGE[depth])):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(SimpleBlock(channels, width, stride, track_running_stats))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(channels, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
