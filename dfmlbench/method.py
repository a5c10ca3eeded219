"""The method interface: `fit(pool, ctx) -> Learner`, and the context every method runs in."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import nn

from dfmlbench.checkpoint import Checkpoints
from dfmlbench.errors import UserError
from dfmlbench.learner import Learner
from dfmlbench.models import build_model
from dfmlbench.pool import TeacherPool
from dfmlbench.pool.pretrain import derive_seed
from dfmlbench.registry import did_you_mean
from dfmlbench.schema import Rule, method_rules
from dfmlbench.timing import Stopwatch


TEST_CURVE = "test_accuracy"  # the periodic test diagnostic's curve (protocol.max_over_test)
RECOVERY_CURVE = "recovery_seconds"  # cumulative, at each validation point
TRAIN_CURVE = "train_seconds"  # cumulative wall seconds of the fit less validation, at each validation point


@dataclass
class RunContext:
    """What a method may use besides the teachers: device, seeds, its settings, timers, logs."""

    device: torch.device
    seed: int
    settings: dict[str, Any]
    learner_arch: str
    image_size: int
    in_channels: int
    way: int
    shot: int
    artifacts_dir: Path
    validator: Callable[[Learner], float] | None = None
    progress_factory: Callable[..., Any] | None = None
    resume: bool = True  # False under --force: a method's checkpoints are not resumed from
    checkpoint_minutes: float | None = 10.0  # runtime.checkpoint_minutes; None: only where a method asks
    on_log: Callable[[str, int, float], None] | None = None  # streams each curve point (dfmlbench.events)
    tester: Callable[[Learner], float] | None = None  # protocol.max_over_test: the periodic test diagnostic
    recovery_clock: Stopwatch = field(init=False)
    validation_clock: Stopwatch = field(init=False)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # method facts for the record
    extra_learners: dict[str, Learner] = field(default_factory=dict)
    checkpoints: Checkpoints = field(init=False)  # the resume-anywhere service (dfmlbench.checkpoint)
    fit_seconds_before: float = field(init=False, default=0.0)  # a resumed fit's seconds before the resume
    _started: float = field(init=False, default=0.0, repr=False)
    _bars: list[Any] = field(init=False, default_factory=list, repr=False)  # open progress bars

    def __post_init__(self) -> None:
        self.recovery_clock = Stopwatch(self.device)
        self.validation_clock = Stopwatch(self.device)
        self.checkpoints = Checkpoints(self)
        self._started = time.perf_counter()

    def generator(self, purpose: str) -> torch.Generator:
        """A torch RNG seeded from the run seed and a purpose, so streams never interfere."""
        return torch.Generator().manual_seed(derive_seed(self.seed, purpose))

    def build_learner_model(self, purpose: str = "learner-init", arch: str | None = None) -> nn.Module:
        """A fresh meta-learner (BN on batch statistics, head bias 0) on the run's device."""
        model = build_model(arch or self.learner_arch, self.way, self.image_size, self.in_channels,
                            batch_stat_bn=True, zero_head_bias=True,
                            generator=self.generator(purpose))
        return model.to(self.device)

    @contextmanager
    def recovery(self) -> Iterator[None]:
        """Time data recovery (model inversion) only: the paper's Time column. A method that
        enters it recovers data: its record gets a recovery time (None otherwise)."""
        with self.recovery_clock.measure():
            yield

    def log(self, name: str, value: float, step: int) -> None:
        """Record one point of a curve (stored in the run record, streamed as it happens); a
        validation also shows on the innermost progress bar."""
        self.curves.setdefault(name, []).append((int(step), float(value)))
        if self.on_log is not None:
            self.on_log(name, int(step), float(value))
        if name == "val_accuracy" and self._bars:
            self._bars[-1].set_postfix_str(f"val {value:.2f}%", refresh=False)

    def also_evaluate(self, name: str, learner: Learner) -> None:
        """Test another learner (e.g. the last epoch's) on the same episodes, as a diagnostic."""
        self.extra_learners[name] = learner

    def validate(self, learner: Learner) -> float:
        """Mean accuracy (%) on the fixed meta-val episodes, for model selection."""
        if self.validator is None:
            raise RuntimeError("this run has no validation episodes")
        with self.validation_clock.measure():  # not meta-training time
            return self.validator(learner)

    def fit_seconds(self) -> float:
        """Wall seconds since the context was made (plus a resumed fit's earlier seconds)."""
        return self.fit_seconds_before + time.perf_counter() - self._started

    def log_costs(self, step: int) -> None:
        """The cumulative cost so far, as curves at `step` (beside a validation point): recovery
        seconds (the Time column's clock) and training seconds (wall, validation left out), so
        accuracy can be read against either (the accuracy-vs-recovery figure)."""
        self.log(RECOVERY_CURVE, self.recovery_clock.seconds, step)
        self.log(TRAIN_CURVE, self.fit_seconds() - self.validation_clock.seconds, step)

    def observe_test(self, learner: Learner, step: int) -> None:
        """Where the official codes test periodically (protocol.max_over_test): a curve point
        `test_accuracy` at `step`, timed as validation. Nothing reads it to select a model."""
        if self.tester is not None:
            with self.validation_clock.measure():
                self.log(TEST_CURVE, self.tester(learner), step)

    @contextmanager
    def progress(self, total: int, desc: str) -> Iterator[Any]:
        """A progress bar (tqdm: rate and ETA) for a method's loop, used as a context manager."""
        from tqdm import tqdm
        bar = (tqdm(total=total, desc=desc, disable=True) if self.progress_factory is None
               else self.progress_factory(total=total, desc=desc))
        self._bars.append(bar)
        try:
            with bar:
                yield bar
        finally:
            self._bars.remove(bar)


@dataclass(frozen=True)
class RecoveryUnit:
    """One repeatable piece of a method's data recovery (a FREE epoch's b recoveries, a PURER
    pseudo-data update, a BiDf-MKD generation event), for the Time column's extrapolation:
    `run` performs one unit, timing itself with ctx.recovery(); the method's settings run
    `count` of them."""

    name: str
    count: int
    run: Callable[[], Any]


class Method:
    """Base class of every DFML method.

    Subclasses declare `defaults` (every setting and its default value); a registry entry may
    fix some of them (a variant), suites and `--set method.KEY=VALUE` override the rest.
    One instance serves every cell of its method: `fit` must keep no state between calls.
    """

    name: ClassVar[str] = ""
    uses_teachers: ClassVar[bool] = True
    # Starts the meta-learner from teacher weights (Best-Model, Average, OTA, DRO): a
    # multi-domain dataset, whose teachers see the shared images through a wrapper and whose
    # learner is conv4-any, cannot serve it.
    copies_teacher_weights: ClassVar[bool] = False
    # Fuses several teachers' weights element-wise (Average, OTA, DRO): needs one architecture.
    fuses_weights: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}
    # The settings that set its training length at paper scale (e.g. {"epochs": 980}), scaled
    # together by a suite's `budget_fraction`; {} for a method that trains nothing. Left
    # undeclared (None), `budget_fraction` refuses the method rather than run it at full length.
    paper_budget: ClassVar[dict[str, int] | None] = None
    # Settings that take one of a few named values: checked once, here, for every method.
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    # Types and ranges the defaults cannot tell (a count that may be 0, a null default);
    # every other setting is typed from its default (dfmlbench.schema.rule_from_default).
    rules: ClassVar[dict[str, Rule]] = {}
    # What a `smoke` profile runs this method with (seconds on a CPU, for tests); a suite's
    # own method_settings and `--set` still win.
    smoke_settings: ClassVar[dict[str, Any]] = {}
    # Settings added after records of the method existed, each with the value that keeps the
    # behaviour from before it: a cell config leaves them out at that value (`recorded_settings`),
    # so earlier records keep their config hashes (as a null protocol.lr_grid is left out).
    added_settings: ClassVar[dict[str, Any]] = {}

    @classmethod
    def budget_at(cls, fraction: float) -> dict[str, int]:
        """The paper budget scaled by `fraction` (rounded, at least 1 each)."""
        if cls.paper_budget is None:
            raise UserError(f"budget_fraction cannot scale '{cls.name}': it declares no paper_budget; declare the "
                            "settings that set its training length (or paper_budget = {} if it trains nothing)")
        return {key: max(1, round(value * fraction)) for key, value in cls.paper_budget.items()}

    def __init__(self, **settings: Any) -> None:
        unknown = sorted(set(settings) - set(self.defaults))
        if unknown:
            raise UserError(f"method '{self.name}' has no setting '{unknown[0]}': "
                            f"{did_you_mean(unknown[0], list(self.defaults)) if self.defaults else 'it takes none'}")
        self.settings = {**self.defaults, **settings}
        for key, rule in method_rules(self.defaults, self.choices, self.rules).items():
            self.settings[key] = rule.apply(f"method_settings.{self.name}.{key}", self.settings[key])

    def paper_share(self) -> float | None:
        """The share of the paper's budget these settings run: the training length (the first
        key of `paper_budget`) over the paper's; None for a method that trains nothing."""
        if not self.paper_budget:
            return None
        key, paper = next(iter(self.paper_budget.items()))
        return float(self.settings.get(key, paper)) / paper

    def pool_settings(self) -> dict[str, Any]:
        """pool.* settings this method's cells use in place of the suite's (free-official's teachers
        selected as the official code selects them); {} for most methods."""
        return {}

    def recorded_settings(self) -> dict[str, Any]:
        """The settings as a cell config states them: all but `added_settings` at their
        behaviour-keeping values."""
        return {key: value for key, value in self.settings.items()
                if not (key in self.added_settings and value == self.added_settings[key])}

    def fit(self, pool: TeacherPool | None, ctx: RunContext) -> Learner:
        raise NotImplementedError

    def recovery_unit(self, pool: TeacherPool, ctx: RunContext) -> RecoveryUnit | None:
        """What `python -m dfmlbench.recovery_time` times and extrapolates; None: the method
        recovers no data."""
        return None
