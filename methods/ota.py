"""OTA (baselines.md §2.4): align every teacher to the most accurate one with optimal transport
on neuron weights (Singh & Jaggi), average the aligned teachers, fine-tune on each support set."""

from __future__ import annotations

import torch

from dfmlbench.fusion import SOLVERS, align_to_anchor, channel_graph, mean_state
from dfmlbench.fusion.alignment import COSTS
from dfmlbench.learner import Learner
from dfmlbench.method import Method, RunContext
from dfmlbench.methods import register
from dfmlbench.models import copy_parameters
from dfmlbench.pool import TeacherPool

WEIGHTINGS = ("uniform", "accuracy")


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: list[str]) -> float:
    return float(torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys)))


@register("ota", "teachers aligned to the best one by optimal transport, averaged, fine-tuned", "OTA")
class OTA(Method):
    copies_teacher_weights = fuses_weights = True
    paper_budget = {}  # trains nothing: budget_fraction leaves it as it is
    choices = {"solver": SOLVERS, "cost": COSTS, "weighting": WEIGHTINGS}
    defaults = {
        "solver": "emd",          # exact OT (POT), as otfusion; "assignment" finds the same permutation
        "cost": "weights",        # neurons compared by incoming weights; "weights+bn" appends conv bias, BN γ, β
        "weighting": "uniform",   # mean of the aligned teachers; "accuracy": weights ∝ held-out accuracy
    }

    def fit(self, pool: TeacherPool | None, ctx: RunContext) -> Learner:
        solver, cost, weighting = (self.settings[k] for k in ("solver", "cost", "weighting"))
        assert pool is not None
        pool.single_architecture("ota")
        anchor = pool.most_accurate()
        graph = channel_graph(anchor.model)
        anchor_state = {k: v.detach().cpu() for k, v in anchor.model.state_dict().items()}
        learnable = [n for n, _ in anchor.model.named_parameters()]

        states, before, after = [], [], []
        for teacher in pool:
            state = {k: v.detach().cpu() for k, v in teacher.model.state_dict().items()}
            if teacher is not anchor:
                before.append(_distance(state, anchor_state, learnable))
                state, _ = align_to_anchor(state, anchor_state, graph, solver, cost)
                after.append(_distance(state, anchor_state, learnable))
            states.append(state)
        weights = [t.heldout_acc for t in pool] if weighting == "accuracy" else None
        model = ctx.build_learner_model(arch=anchor.arch)
        copy_parameters(model, mean_state(states, weights))

        ctx.info.update(anchor_index=anchor.index, anchor_heldout_acc=anchor.heldout_acc,
                        solver=solver, cost=cost, weighting=weighting,
                        # a sanity figure: alignment should bring teachers closer to the anchor
                        mean_distance_to_anchor_before=sum(before) / max(len(before), 1),
                        mean_distance_to_anchor_after=sum(after) / max(len(after), 1))
        return Learner(model, description=f"OT-aligned {weighting} mean of {len(pool)} teachers "
                                          f"(anchor {anchor.index}, {solver})")
