"""The run context's checkpoint service: a long method (FREE, PURER, BiDf-MKD) says what its
state is and how to load it; the service owns the rest, so that a killed or preempted cell,
run again, resumes at its last checkpoint and ends with exactly the record an uninterrupted
run writes.

What the service owns: the file (`<artifacts>/checkpoint.pt`, written atomically, read with
`weights_only=True`), when to save (every `every` units the method asks for, and at the first
unit boundary after `runtime.checkpoint_minutes`), the context's own state (curves, clocks,
info) and the global torch RNG, `--force` (a checkpoint is removed, not used), and a damaged
file (named in one note, removed, the cell starts afresh from a new build: the old one may be
half restored)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar

import numpy as np
import torch

from dfmlbench.errors import note
from dfmlbench.paths import write_bytes_atomic

if TYPE_CHECKING:
    from dfmlbench.method import RunContext

FILE_NAME = "checkpoint.pt"


class Resumable(Protocol):
    def state(self) -> dict[str, Any]:
        """Everything the next units depend on (tensors, numbers, strings, lists, dicts)."""

    def restore(self, state: dict[str, Any]) -> None:
        """Load what `state()` returned; raise on anything missing or mismatched."""


R = TypeVar("R", bound=Resumable)


class Checkpoints:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._last_save = time.monotonic()

    @property
    def path(self) -> Path:
        return self.ctx.artifacts_dir / FILE_NAME

    def resume(self, build: Callable[[], R], unit: str) -> tuple[R, int]:
        """A fresh `build()`, restored from the checkpoint when there is one, and the first unit
        (1-based) still to run."""
        training, path = build(), self.path
        self._last_save = time.monotonic()
        if not path.is_file() or not self.ctx.resume:
            path.unlink(missing_ok=True)
            return training, 1
        try:
            state = torch.load(path, map_location=self.ctx.device, weights_only=True)
            training.restore(state["method"])
            context = state["context"]
            for key in ("curves", "recovery", "validation", "info", "torch_rng", "unit"):
                context[key]  # noqa: B018 -- all present before the context is touched
        except Exception as exc:  # torch.load and load_state_dict raise many types on a damaged file
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            note(f"checkpoint {path} cannot be restored ({type(exc).__name__}: {reason[:160]}); "
                 f"removed, the cell starts again from {unit} 1")
            path.unlink(missing_ok=True)
            return build(), 1
        ctx = self.ctx
        ctx.curves.clear()
        ctx.curves.update({k: [tuple(p) for p in v] for k, v in context["curves"].items()})
        ctx.recovery_clock.seconds, ctx.recovery_clock.intervals = context["recovery"]
        ctx.validation_clock.seconds, ctx.validation_clock.intervals = context["validation"]
        ctx.fit_seconds_before = float(context.get("fit_seconds", 0.0))  # absent in older checkpoints
        ctx.info.update(context["info"])
        ctx.info[f"resumed_from_{unit}"] = context["unit"]
        torch.set_rng_state(context["torch_rng"])
        return training, context["unit"] + 1

    def after(self, unit: int, total: int, training: Resumable, every: int = 0) -> None:
        """Unit `unit` of `total` is done: save when `every` units or the configured minutes
        have passed (never after the last unit: the cell is about to finish)."""
        if unit >= total:
            return
        minutes = self.ctx.checkpoint_minutes
        due_by_time = minutes is not None and time.monotonic() - self._last_save >= 60 * minutes
        if (every and unit % every == 0) or due_by_time:
            self.save(unit, training)

    def save(self, unit: int, training: Resumable) -> None:
        ctx = self.ctx
        state = {"method": training.state(), "context": {
            "unit": unit, "curves": ctx.curves, "info": ctx.info, "torch_rng": torch.get_rng_state(),
            "recovery": [ctx.recovery_clock.seconds, ctx.recovery_clock.intervals],
            "validation": [ctx.validation_clock.seconds, ctx.validation_clock.intervals],
            "fit_seconds": ctx.fit_seconds()}}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_bytes_atomic(self.path, buffer.getvalue())
        self._last_save = time.monotonic()

    def finish(self) -> None:
        """The cell is done: its checkpoint is no longer needed."""
        self.path.unlink(missing_ok=True)


def numpy_rng_state(rng: np.random.Generator) -> str:
    """A numpy generator's state as text (a checkpoint loads without unpickling)."""
    return json.dumps(rng.bit_generator.state)


def set_numpy_rng_state(rng: np.random.Generator, state: str) -> None:
    rng.bit_generator.state = json.loads(state)
