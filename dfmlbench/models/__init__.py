"""Backbones by name, with the official initialisation (free.md §1)."""

from __future__ import annotations

import math

import torch
from torch import nn

from dfmlbench.errors import UserError
from dfmlbench.models.conv4 import Conv4
from dfmlbench.models.resnet import BLOCKS_PER_STAGE, ResNet
from dfmlbench.registry import did_you_mean

ARCHITECTURES = ("conv4", "conv4-any", *BLOCKS_PER_STAGE)  # conv4-any: any input size (global max-pool)


def init_official(model: nn.Module) -> None:
    """Conv weights N(0, sqrt(2 / (9 * out_channels))), BN weight 1 and bias 0; the rest default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan))
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def build_model(arch: str, num_classes: int = 5, image_size: int = 32, in_channels: int = 3,
                batch_stat_bn: bool = False, zero_head_bias: bool = False,
                generator: torch.Generator | None = None) -> nn.Module:
    """A freshly initialised backbone.

    `batch_stat_bn=True` builds the meta-learner form: BN without running statistics, so it
    always uses the current batch (baselines.md §1.2). Teachers use plain BN.
    `generator` makes the initialisation reproducible without touching the global RNG.
    """
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture '{arch}': {did_you_mean(arch, list(ARCHITECTURES))}")
    track = not batch_stat_bn
    with torch.random.fork_rng(devices=[]):
        if generator is not None:
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        if arch in ("conv4", "conv4-any"):
            model: nn.Module = Conv4(num_classes, image_size, in_channels, track_running_stats=track,
                                     any_size=arch == "conv4-any")
        else:
            model = ResNet(arch, num_classes, in_channels, track_running_stats=track)
        init_official(model)
        if zero_head_bias:
            nn.init.zeros_(model.classifier.bias)
    model.dfmlbench_arch = arch  # what a saved learner is rebuilt as (dfmlbench.learner_store)
    return model


def copy_parameters(target: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a teacher's learnable parameters into a meta-learner; running statistics are dropped
    because the meta-learner normalises with batch statistics."""
    names = dict(target.named_parameters())
    missing = [n for n in names if n not in state]
    if missing:
        raise UserError(f"weights do not fit the meta-learner architecture: missing {missing[0]}; "
                        "use a learner.arch equal to the teachers' architecture")
    with torch.no_grad():
        for name, param in names.items():
            if state[name].shape != param.shape:
                raise UserError(f"weights do not fit the meta-learner: {name} has shape "
                                f"{tuple(state[name].shape)}, expected {tuple(param.shape)}")
            param.copy_(state[name])


__all__ = ["ARCHITECTURES", "Conv4", "ResNet", "build_model", "copy_parameters", "init_official"]
