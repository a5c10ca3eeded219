"""Model selection on meta-val, shared by the methods that train a meta-learner: validate every
`interval` steps, keep the best state, and at the end hand back the best while the last state
is tested too (as a diagnostic on the same test episodes)."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from dfmlbench.learner import Learner
from dfmlbench.method import RunContext


class ModelSelection:
    def __init__(self, ctx: RunContext, model: nn.Module, interval: int, total: int) -> None:
        if interval < 1:
            raise ValueError(f"val_interval must be at least 1, got {interval}")
        self.ctx, self.model, self.interval, self.total = ctx, model, interval, total
        self.best_val = -1.0
        self.best_state: dict | None = None

    def due(self, step: int) -> bool:
        """Validate every `interval` steps and after the last one."""
        return step % self.interval == 0 or step == self.total

    def observe(self, step: int) -> float:
        """Validate the current meta-learner (curve point `val_accuracy` at `step`); keep it if best."""
        accuracy = self.ctx.validate(Learner(self.model))
        self.ctx.log("val_accuracy", accuracy, step)
        self.ctx.log_costs(step)
        self.ctx.observe_test(Learner(self.model), step)
        if accuracy > self.best_val:
            self.best_val, self.best_state = accuracy, copy.deepcopy(self.model.state_dict())
        return accuracy

    def state_dict(self) -> dict[str, Any]:
        return {"best_val": self.best_val, "best_state": self.best_state or {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_val, self.best_state = state["best_val"], state["best_state"] or None

    def finish(self, method_label: str) -> Learner:
        """Queue the last state for a diagnostic test, load the best one and return it."""
        last = copy.deepcopy(self.model)
        self.ctx.also_evaluate("last_epoch", Learner(last, description=f"{method_label} meta-learner at the last step"))
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.ctx.info["best_val_accuracy"] = self.best_val
        return Learner(self.model, description=f"{method_label} meta-learner selected on meta-val ({self.best_val:.2f}%)")
