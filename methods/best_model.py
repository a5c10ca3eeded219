"""Best-Model (baselines.md §2.2): the teacher with the highest recorded held-out accuracy as
the initialisation, its output units mapped to the episode's classes by identity."""

from __future__ import annotations

from dfmlbench.learner import Learner
from dfmlbench.method import Method, RunContext
from dfmlbench.methods import Variant, register
from dfmlbench.models import copy_parameters
from dfmlbench.pool import TeacherPool

VARIANTS = {
    # default: load the teacher and run the shared 10-step fine-tune (the evident reading).
    "finetune": {},
    # diagnostics: no gradient step; identity head (about 20%) or Hungarian-matched head.
    "zero-step": {"adapt_steps": 0},
    "hungarian": {"adapt_steps": 0, "head_matching": True},
}


@register("best-model", "the most accurate teacher, fine-tuned on each support set", "Best-Model", {
    "best-model-zero-step": Variant({"variant": "zero-step"}, "diagnostic: best teacher, identity head, no steps"),
    "best-model-hungarian": Variant({"variant": "hungarian"},
                                    "diagnostic: best teacher, head matched on the support, no steps"),
})
class BestModel(Method):
    copies_teacher_weights = True
    paper_budget = {}  # trains nothing: budget_fraction leaves it as it is
    defaults = {"variant": "finetune"}
    choices = {"variant": tuple(VARIANTS)}

    def fit(self, pool: TeacherPool | None, ctx: RunContext) -> Learner:
        variant = self.settings["variant"]
        assert pool is not None
        teacher = pool.most_accurate()
        model = ctx.build_learner_model(arch=teacher.arch)
        copy_parameters(model, teacher.model.state_dict())
        ctx.info.update(teacher_index=teacher.index, teacher_heldout_acc=teacher.heldout_acc,
                        teacher_classes=teacher.class_names, variant=variant)
        return Learner(model, description=f"teacher {teacher.index} ({variant})", **VARIANTS[variant])
