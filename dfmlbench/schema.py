"""Typed settings: each setting's type and range, coerced and checked when a suite is resolved,
so bad input stops in one line (key, value, what is allowed) before any pool is built.

A `Rule` turns a raw YAML value into the typed one or says what is allowed. The package
defaults have explicit rules (`GLOBAL_RULES`); a method's settings are typed from its
`defaults` and `choices` (`method_rules`), with the method's own `rules` where a default alone
cannot tell (a count that may be 0, a setting that defaults to null).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import yaml

from dfmlbench.errors import UserError


@dataclass(frozen=True)
class Rule:
    """`allowed` completes "must be ..."; `coerce` returns the typed value or raises ValueError."""

    allowed: str
    coerce: Callable[[Any], Any]

    def apply(self, key: str, value: Any) -> Any:
        try:
            return self.coerce(value)
        except (TypeError, ValueError):
            raise UserError(f"{key}={show(value)} is not allowed: {key} must be {self.allowed}") from None


def show(value: Any) -> str:
    """A value as the user wrote it (YAML-like: null, true, 'text', [1, 2])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def _fail() -> Any:
    raise ValueError


def integer(minimum: int | None = None) -> Rule:
    """An int (an integral float such as 1e3 counts), at least `minimum`."""
    def coerce(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail()
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            _fail()
        if minimum is not None and value < minimum:
            _fail()
        return int(value)
    bound = {None: "", 0: " >= 0", 1: " >= 1"}.get(minimum, f" >= {minimum}")
    return Rule(f"an integer{bound}", coerce)


def number(low: float | None = None, *, low_open: bool = False, high: float | None = None) -> Rule:
    """A finite int or float in [low, high] (`low_open`: low itself excluded)."""
    def coerce(value: Any) -> float | int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _fail()
        if low is not None and (value < low or (low_open and value == low)):
            _fail()
        if high is not None and value > high:
            _fail()
        return value
    if low == 0 and low_open and high is None:
        allowed = "a positive, finite number"
    elif low == 0 and high is None:
        allowed = "a finite number >= 0"
    elif low is None and high is None:
        allowed = "a finite number"
    else:
        allowed = f"a number in {'(' if low_open else '['}{low}, {high}]"
    return Rule(allowed, coerce)


POSITIVE = number(0, low_open=True)


def flag() -> Rule:
    def coerce(value: Any) -> bool:
        if not isinstance(value, bool):
            _fail()
        return value
    return Rule("true or false", coerce)


def text() -> Rule:
    def coerce(value: Any) -> str:
        if not isinstance(value, str) or not value:
            _fail()
        return value
    return Rule("a non-empty text", coerce)


def choice(options: Iterable[str]) -> Rule:
    options = tuple(options)

    def coerce(value: Any) -> str:
        if value not in options:
            _fail()
        return value
    return Rule("one of " + ", ".join(options), coerce)


def optional(rule: Rule) -> Rule:
    return Rule(f"null or {rule.allowed}", lambda value: None if value is None else rule.coerce(value))


def items(rule: Rule, *, empty: bool = False) -> Rule:
    """A list of values that each follow `rule` (a single value is read as a list of one)."""
    def coerce(value: Any) -> list[Any]:
        values = value if isinstance(value, list) else [value]
        if not values and not empty:
            _fail()
        return [rule.coerce(v) for v in values]
    return Rule(f"a{'' if empty else ' non-empty'} list, each {rule.allowed}", coerce)


COUNT = integer(1)
SEED = integer(0)

# The package defaults' settings (config.DEFAULTS), by dotted key. Names of methods, datasets
# and analyses are checked against their registries; `sweep` values by the rule of their key.
GLOBAL_RULES: dict[str, Rule] = {
    "methods": items(text(), empty=True),
    "datasets": items(text()),
    "shots": items(COUNT),
    "seeds": items(SEED),
    "analyses": items(text(), empty=True),
    "protocol.way": integer(2),
    "protocol.query": COUNT,
    "protocol.test_episodes": COUNT,
    "protocol.val_episodes": COUNT,
    "protocol.steps": integer(0),  # 0: test the init as it is (a diagnostic)
    "protocol.lr": POSITIVE,
    "protocol.lr_grid": optional(items(POSITIVE)),
    "protocol.episode_seed": SEED,
    "protocol.max_over_test": flag(),
    "pool.arch": text(),  # one of the architectures or `mix`: checked by config (needs the models)
    "pool.num_teachers": COUNT,
    "pool.way": integer(2),
    "pool.epochs": COUNT,
    "pool.batch_size": COUNT,
    "pool.lr": POSITIVE,
    "pool.clip": POSITIVE,
    "pool.select": choice(("best", "final")),
    "pool.seed": SEED,
    "pool.path": optional(text()),
    "learner.arch": text(),  # one of the architectures: checked by config (needs the models)
    "budget_fraction": optional(number(0, low_open=True, high=1)),
    "runtime.device": text(),
    "runtime.eval_chunk": COUNT,
    "runtime.data_root": optional(text()),
    "runtime.download": flag(),
    "runtime.checkpoint_minutes": optional(number(0)),
    "runtime.tensorboard": flag(),
    "launcher.gpus_per_job": integer(0),
    "launcher.cpus_per_job": COUNT,
    "launcher.mem_gb": POSITIVE,
    "launcher.timeout_min": COUNT,
    "launcher.partition": optional(text()),
    "launcher.account": optional(text()),
    "launcher.array_parallelism": COUNT,
}


def is_learning_rate(key: str) -> bool:
    return key == "lr" or key.endswith("_lr")


def rule_from_default(key: str, default: Any) -> Rule | None:
    """A setting's type and range read off its default: a flag stays a flag; an int >= 1 is a
    count (>= 1), an int 0 may not go below 0; a learning rate is positive; other floats keep
    the sign of their default (a weight >= 0); a text stays a text; a list keeps its items' type.
    None when the default tells nothing (null): such settings need an explicit rule."""
    if isinstance(default, bool):
        return flag()
    if isinstance(default, int):
        return integer(1 if default >= 1 else 0 if default == 0 else None)
    if isinstance(default, float):
        if is_learning_rate(key):
            return POSITIVE
        return number(0) if default >= 0 else number()
    if isinstance(default, str):
        return text()
    if isinstance(default, list) and default:
        inner = rule_from_default(key, default[0])
        return items(inner) if inner else None
    return None


def method_rules(defaults: dict[str, Any], choices: dict[str, tuple[str, ...]],
                 explicit: dict[str, Rule]) -> dict[str, Rule]:
    """Every setting's rule: explicit, else its choices, else read off its default."""
    rules = {}
    for key, default in defaults.items():
        rule = explicit.get(key) or (choice(choices[key]) if key in choices else rule_from_default(key, default))
        if rule is not None:
            rules[key] = rule
    return rules


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` (no dot) as a string; everyone writing it means the number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text_: str) -> Any:
    """YAML as settings are read everywhere (suite files, profiles, `--set` values)."""
    return yaml.load(text_, Loader=_Loader)  # a SafeLoader: builds only plain data
