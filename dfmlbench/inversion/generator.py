"""The image generator of BiDf-MKD and FREE (baselines.md §1.6, free.md §3.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfmlbench.kernels import in_layout

# For each output phase p of a x2 nearest upsampling (row or column 2i + p), which input rows
# (i - 1 + p and i + p) a 3x3 tap row falls on: phase 0 sees rows [i-1, i, i], phase 1 [i, i, i+1].
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],
                            [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


class UpsampledConv2d(nn.Conv2d):
    """A x2 nearest upsampling followed by this 3x3 convolution (padding 1), computed without
    the upsampled map: each of the four output phases is a 2x2 convolution of the input whose
    taps are sums of the 3x3 ones. The same function (up to float rounding: taps are summed
    first) at 16/36 of the multiply-adds; the parameters are the convolution's own."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        taps = _PHASE_TAPS.to(self.weight)
        phase_weights = torch.einsum("apr,oirs,bqs->aboipq", taps, self.weight, taps)  # 2 x 2 x out x in x 2 x 2
        padded = F.pad(x, (1, 1, 1, 1))
        # phase (a, b) of output pixel (2i + a, 2j + b), as (n, h, w, out) views of channels-last maps
        rows = [torch.stack([F.conv2d(padded[:, :, a:a + h + 1, b:b + w + 1], phase_weights[a, b], self.bias)
                             .permute(0, 2, 3, 1) for b in (0, 1)], dim=3) for a in (0, 1)]
        interleaved = torch.stack(rows, dim=2).reshape(n, 2 * h, 2 * w, -1)  # (n, h, a, w, b, out)
        return interleaved.permute(0, 3, 1, 2)  # (n, out, 2h, 2w), channels-last in memory


class Generator(nn.Module):
    """z (nz) -> image in [0, 1] (channels x size x size).

    Linear to 2*ngf x size/4 x size/4, BN, x2 upsample, conv 2ngf->2ngf, BN, LeakyReLU,
    x2 upsample, conv 2ngf->ngf, BN, LeakyReLU, conv ngf->channels, sigmoid. BN always uses
    batch statistics, as the official generator (always in train mode) does. Each upsampling
    and the convolution after it are one `UpsampledConv2d` (the same function, fewer FLOPs).
    """

    def __init__(self, nz: int = 256, ngf: int = 64, image_size: int = 32, channels: int = 3) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"the generator needs an image size divisible by 4, got {image_size}")
        self.nz, self.init_size = nz, image_size // 4
        self.project = nn.Linear(nz, 2 * ngf * self.init_size ** 2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * ngf, track_running_stats=False),
            UpsampledConv2d(2 * ngf, 2 * ngf),
            nn.BatchNorm2d(2 * ngf, track_running_stats=False),
            nn.LeakyReLU(0.2),
            UpsampledConv2d(2 * ngf, ngf),
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
