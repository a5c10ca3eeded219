"""Random-scaled (a control, not a paper method; issue 17): Random's init with each parameter
tensor rescaled to the norm of the same tensor in the pool's weight Average.

It separates scale from knowledge. Under the fixed meta-test lr and batch-statistics BN a
network's weight scale sets its effective step size, so an Average of teachers that barely left
their inits can beat Random by scale alone. This control has the Average's per-tensor norms
and Random's directions: Average - Random-scaled is what the teachers' knowledge adds, and
Random-scaled - Random what the scale adds (the three share the meta-test episodes)."""

from __future__ import annotations

import torch

from dfmlbench.adaptation import parameters_of
from dfmlbench.learner import Learner
from dfmlbench.method import Method, RunContext
from dfmlbench.methods import register
from dfmlbench.methods.average import average_state
from dfmlbench.pool import TeacherPool

RANDOM_INIT_LABEL = "random-init"  # Random's seeded init (methods/random_init.py): the same directions


@register("random-scaled", "control: Random's init rescaled per tensor to the norms of the teachers' "
          "Average (scale without knowledge)", "Random-scaled")
class RandomScaled(Method):
    copies_teacher_weights = fuses_weights = True
    paper_budget = {}  # trains nothing: budget_fraction leaves it as it is

    def fit(self, pool: TeacherPool | None, ctx: RunContext) -> Learner:
        assert pool is not None
        arch = pool.single_architecture("random-scaled")
        model = ctx.build_learner_model(RANDOM_INIT_LABEL, arch=arch)
        average = average_state([t.model.state_dict() for t in pool])
        scales = {}
        with torch.no_grad():
            for name, param in parameters_of(model).items():
                init_norm = float(param.norm())
                if init_norm == 0:  # zero-initialised (BN biases): no direction to rescale
                    continue
                scales[name] = float(average[name].double().norm()) / init_norm
                param.mul_(scales[name])
        ctx.info.update(scale_per_tensor={k: round(v, 6) for k, v in scales.items()},
                        unscaled_tensors=[n for n in parameters_of(model) if n not in scales])
        return Learner(model, description=f"Random's init at the per-tensor norms of the mean of {len(pool)} "
                                          "teachers")
