"""What a method hands to the shared evaluation: a meta-initialisation and how it adapts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from dfmlbench.adaptation import Params


@dataclass
class Learner:
    """A meta-initialisation (`model`, BN on batch statistics) adapted by the shared protocol.

    The optional fields exist for the baselines' documented variants; a normal method sets none:
    - `adapt_steps`: replaces the protocol's number of SGD steps (0 = predict without adapting);
    - `head_matching`: map output units to episode classes by Hungarian matching on the
      support's summed log-probabilities before predicting (Best-Model's diagnostic);
    - `init_for_episode`: a different initialisation per episode index (Random's re-init flag).
    """

    model: nn.Module
    adapt_steps: int | None = None
    head_matching: bool = False
    init_for_episode: Callable[[int], Params] | None = None
    description: str = ""
