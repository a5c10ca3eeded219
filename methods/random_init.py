"""Random (baselines.md §2.1): no teachers; fine-tune a random initialisation on each support set."""

from __future__ import annotations

from dfmlbench.adaptation import parameters_of
from dfmlbench.learner import Learner
from dfmlbench.method import Method, RunContext
from dfmlbench.methods import Variant, register
from dfmlbench.pool import TeacherPool


@register("random", "fine-tune one seeded random init per episode (no teachers)", "Random",
          {"random-reinit": Variant({"reinit_per_task": True}, "Random with a fresh init for every episode")})
class RandomInit(Method):
    paper_budget = {}  # trains nothing: budget_fraction leaves it as it is
    uses_teachers = False
    defaults = {
        # Official code (TDS method/random.py) reuses one seeded init for every episode; the
        # paper's wording ("from scratch for each task") suggests a fresh one (deviation R1).
        "reinit_per_task": False,
    }

    def fit(self, pool: TeacherPool | None, ctx: RunContext) -> Learner:
        model = ctx.build_learner_model("random-init")
        if not self.settings["reinit_per_task"]:
            return Learner(model, description="one seeded random init shared by all episodes")

        def init_for_episode(episode: int):
            return parameters_of(ctx.build_learner_model(f"random-init-episode-{episode}"))

        return Learner(model, init_for_episode=init_for_episode,
                       description="a fresh seeded random init per episode")
