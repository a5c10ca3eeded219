"""Average (baselines.md §2.3): element-wise mean of every teacher's weights, no alignment."""

from __future__ import annotations

import torch

from dfmlbench.fusion import mean_state
from dfmlbench.learner import Learner
from dfmlbench.method import Method, RunContext
from dfmlbench.methods import register
from dfmlbench.models import copy_parameters
from dfmlbench.pool import TeacherPool


def average_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform mean of every entry (weights, BN affine and running statistics alike)."""
    return mean_state(states)


@register("average", "element-wise mean of all teachers' weights, fine-tuned", "Average")
class Average(Method):
    copies_teacher_weights = fuses_weights = True
    paper_budget = {}  # trains nothing: budget_fraction leaves it as it is

    def fit(self, pool: TeacherPool | None, ctx: RunContext) -> Learner:
        assert pool is not None
        arch = pool.single_architecture("average")
        model = ctx.build_learner_model(arch=arch)
        copy_parameters(model, average_state([t.model.state_dict() for t in pool]))
        return Learner(model, description=f"mean of {len(pool)} teachers")
