"""What a running cell says while it runs, so a run under `nohup` or Slurm is never silent for
minutes: every curve point and stage change appended to `<stem>.events.jsonl` as it happens
(one JSON object a line, flushed), a log (stdlib `logging`) in `<stem>.log`, one line per stage
and per validation on stderr when stderr is not a terminal (on a terminal the progress bars
show it), and optionally TensorBoard scalars (`runtime.tensorboard: true`)."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from dfmlbench.errors import UserError

LOGGER = "dfmlbench.cell"
LOUD_CURVES = ("val_accuracy",)  # curve points that also go to the log, one line each


def events_path(stem: Path) -> Path:
    return stem.with_suffix(".events.jsonl")


def log_path(stem: Path) -> Path:
    return stem.with_suffix(".log")


def check_tensorboard(wanted: bool) -> None:
    """Pre-flight: TensorBoard output needs the `tensorboard` package."""
    if wanted and importlib.util.find_spec("tensorboard") is None:
        raise UserError("runtime.tensorboard is true but the tensorboard package is not installed: "
                        "pip install tensorboard (or set runtime.tensorboard=false)")


class CellEvents:
    """One cell's event stream, log file and optional TensorBoard writer; a context manager."""

    def __init__(self, stem: Path, label: str, tensorboard: bool = False, console: bool | None = None) -> None:
        stem.parent.mkdir(parents=True, exist_ok=True)
        self.label, self.started = label, time.monotonic()
        self.stream = open(events_path(stem), "a", encoding="utf-8")  # appended: a resumed cell continues it
        self.logger = logging.getLogger(f"{LOGGER}.{stem.name}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        formatter = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
        self.handlers: list[logging.Handler] = [logging.FileHandler(log_path(stem), encoding="utf-8")]
        if console if console is not None else not sys.stderr.isatty():
            self.handlers.append(logging.StreamHandler(sys.stderr))
        for handler in self.handlers:
            handler.setFormatter(formatter)
            self.logger.addHandler(handler)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(stem.with_suffix(".tensorboard")))

    def _emit(self, kind: str, **fields: Any) -> None:
        line = {"t": round(time.monotonic() - self.started, 3), "kind": kind, **fields}
        self.stream.write(json.dumps(line) + "\n")
        self.stream.flush()

    def stage(self, name: str, **fields: Any) -> None:
        """A stage begins (or the cell ends): pool, fit, meta-test, recorded, failed."""
        self._emit("stage", stage=name, **fields)
        details = "".join(f" {key}={value}" for key, value in fields.items())
        self.logger.info(f"{self.label}: {name}{details}")

    def point(self, name: str, step: int, value: float) -> None:
        """One curve point (ctx.log); validations are also logged."""
        self._emit("curve", name=name, step=step, value=value)
        if name in LOUD_CURVES:
            self.logger.info(f"{self.label}: {name} {value:.2f} at step {step}")
        if self.writer is not None:
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.stream.close()
        for handler in self.handlers:
            self.logger.removeHandler(handler)
            handler.close()
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> CellEvents:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
