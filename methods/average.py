"""Average (baselines.md §2.3): element-wise mean of every teacher's weights, no alignment."""

from __future__ import annotations

import torch

from dfmlbench.errors import UserError
from dfmlbench.fusion import mean_state
from dfmlbench.learner import Learner
from dfmlbench.method import Method, RunContext
from dfmlbench.models import copy_parameters
from dfmlbench.pool import TeacherPool


def average_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform mean of every entry (weights, BN affine and running statistics alike)."""
    return mean_state(states)


class Average(Method):
    name = "average"

    def fit(self, pool: TeacherPool | None, ctx: RunContext) -> Learner:
        assert pool is not None
        if len(pool.architectures) != 1:
            raise UserError(f"average needs teachers of one architecture, the pool mixes "
                            f"{', '.join(pool.architectures)}")
        model = ctx.build_learner_model(arch=pool.architectures[0])
        copy_parameters(model, average_state([t.model.state_dict() for t in pool]))
        return Learner(model, description=f"mean of {len(pool)} teachers")
