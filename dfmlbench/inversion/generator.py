"""The image generator of BiDf-MKD and FREE (baselines.md §1.6, free.md §3.1)."""

from __future__ import annotations

import torch
from torch import nn

from dfmlbench.kernels import in_layout


class Generator(nn.Module):
    """z (nz) -> image in [0, 1] (channels x size x size).

    Linear to 2*ngf x size/4 x size/4, BN, x2 upsample, conv 2ngf->2ngf, BN, LeakyReLU,
    x2 upsample, conv 2ngf->ngf, BN, LeakyReLU, conv ngf->channels, sigmoid. BN always uses
    batch statistics, as the official generator (always in train mode) does.
    """

    def __init__(self, nz: int = 256, ngf: int = 64, image_size: int = 32, channels: int = 3) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"the generator needs an image size divisible by 4, got {image_size}")
        self.nz, self.init_size = nz, image_size // 4
        self.project = nn.Linear(nz, 2 * ngf * self.init_size ** 2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * ngf, track_running_stats=False),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, 2 * ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * ngf, track_running_stats=False),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(ngf, track_running_stats=False),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ngf, channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(len(z), -1, self.init_size, self.init_size)
        return self.body(in_layout(x))


def reset_generator(generator: nn.Module, rng: torch.Generator | None = None) -> None:
    """BiDf-MKD's re-initialisation: conv/linear weights N(0, 0.02), BN weights N(1, 0.02), biases 0."""
    for module in generator.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                module.weight.normal_(0.0, 0.02, generator=rng)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.normal_(1.0, 0.02, generator=rng)
            nn.init.zeros_(module.bias)
