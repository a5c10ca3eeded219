"""Which state-dict entries share a channel axis: the permutation symmetries of a backbone.

Permuting the channels of one hidden "space" (a conv's outputs with its bias and BN, and the
input axis of every layer that reads them) leaves the function unchanged. A residual sum makes
several convs write into one space, so they must share its permutation (ResNet).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from dfmlbench.errors import UserError
from dfmlbench.models import Conv4, ResNet


@dataclass(frozen=True)
class Layer:
    """A conv and the BN after it, writing into a channel space."""

    weight: str                  # conv weight: dim 0 = output channel, dim 1 = input channel
    affine: tuple[str, ...]      # conv bias, BN weight and bias: indexed by output channel
    statistics: tuple[str, ...]  # BN running mean and variance: indexed by output channel
    source: str | None           # the space its input axis reads; None for the image


@dataclass(frozen=True)
class ChannelSpace:
    name: str
    width: int
    layers: tuple[Layer, ...]    # every layer summed into this space (a residual sum: several)


@dataclass(frozen=True)
class ChannelGraph:
    """The hidden spaces in an order where a space's first layer reads an earlier space (or
    the image), and the head, whose input axis reads the last space and whose rows are left
    alone (the output units of different teachers mean different classes)."""

    spaces: tuple[ChannelSpace, ...]
    head_weight: str
    head_source: str

    def space(self, name: str) -> ChannelSpace:
        return next(s for s in self.spaces if s.name == name)

    def readers(self, name: str) -> list[str]:
        """Weights whose input axis (dim 1) indexes the space `name`."""
        weights = [layer.weight for s in self.spaces for layer in s.layers if layer.source == name]
        return weights + ([self.head_weight] if self.head_source == name else [])

    def keys(self) -> set[str]:
        """Every state-dict entry some permutation touches."""
        touched = {self.head_weight}
        for space in self.spaces:
            for layer in space.layers:
                touched.update((layer.weight, *layer.affine, *layer.statistics))
        return touched


def _conv_bn(conv: str, bn: str, source: str | None, keys: set[str]) -> Layer:
    affine = tuple(k for k in (f"{conv}.bias", f"{bn}.weight", f"{bn}.bias") if k in keys)
    statistics = tuple(k for k in (f"{bn}.running_mean", f"{bn}.running_var") if k in keys)
    return Layer(f"{conv}.weight", affine, statistics, source)


def _conv4_graph(model: Conv4, keys: set[str]) -> ChannelGraph:
    spaces, source = [], None
    for i, block in enumerate(model.features):
        name = f"features.{i}"
        spaces.append(ChannelSpace(name, block[0].out_channels,
                                   (_conv_bn(f"{name}.0", f"{name}.1", source, keys),)))
        source = name
    # The head reads the flattened (C, H, W) map: its input axis is C blocks of H*W columns.
    return ChannelGraph(tuple(spaces), "classifier.weight", source)


def _resnet_graph(model: ResNet, keys: set[str]) -> ChannelGraph:
    stem_width = model.stem[0].out_channels
    spaces: list[tuple[str, int, list[Layer]]] = [("stem", stem_width, [_conv_bn("stem.0", "stem.1", None, keys)])]
    stream = spaces[0]  # the residual stream the next block reads and adds to
    for j, block in enumerate(model.blocks):
        prefix, width = f"blocks.{j}", block.conv1.out_channels
        inner = (f"{prefix}.inner", width, [_conv_bn(f"{prefix}.conv1", f"{prefix}.bn1", stream[0], keys)])
        spaces.append(inner)
        branch = _conv_bn(f"{prefix}.conv2", f"{prefix}.bn2", inner[0], keys)
        if isinstance(block.shortcut, nn.Sequential):
            # A projection shortcut starts a new stream: both summands share its permutation.
            shortcut = _conv_bn(f"{prefix}.shortcut.0", f"{prefix}.shortcut.1", stream[0], keys)
            stream = (f"{prefix}.out", width, [branch, shortcut])
            spaces.append(stream)
        else:
            # An identity shortcut adds to the stream as it is: the branch joins the stream's space.
            stream[2].append(branch)
    return ChannelGraph(tuple(ChannelSpace(n, w, tuple(ls)) for n, w, ls in spaces),
                        "classifier.weight", stream[0])


def channel_graph(model: nn.Module) -> ChannelGraph:
    """The permutation structure of a Conv4 or ResNet-10/18 (entries of `model.state_dict()`)."""
    keys = set(model.state_dict())
    if isinstance(model, Conv4):
        return _conv4_graph(model, keys)
    if isinstance(model, ResNet):
        return _resnet_graph(model, keys)
    raise UserError(f"no channel graph for {type(model).__name__}: alignment supports conv4, resnet10 and resnet18")
