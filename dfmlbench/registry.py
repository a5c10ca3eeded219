"""Named registries (methods, datasets, suites) with lazy targets and did-you-mean errors."""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from dfmlbench.errors import UserError

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    """A hint naming the closest choice, or the list of choices when none is close."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        return f"did you mean '{close[0]}'?"
    return "choose one of: " + ", ".join(sorted(choices))


def import_target(target: str) -> Any:
    """Resolve a lazy 'package.module:attribute' reference."""
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered name: a target (object or lazy 'module:attr'), fixed settings, a summary."""

    name: str
    target: Any
    settings: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    display: str = ""  # how the paper (or the method's author) names it in tables; "" = its name

    def load(self) -> T:
        return import_target(self.target) if isinstance(self.target, str) else self.target


class Registry(Generic[T]):
    """Maps names to entries; unknown names raise UserError with a suggestion. `discover`, if
    given, runs once before the first lookup (it imports the modules that register entries)."""

    def __init__(self, kind: str, discover: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._discover = discover

    def _discovered(self) -> None:
        discover, self._discover = self._discover, None
        if discover is not None:
            discover()

    def register(self, name: str, target: Any, settings: dict[str, Any] | None = None,
                 summary: str = "", display: str = "") -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = Entry(name, target, dict(settings or {}), summary, display)

    def sort(self, key: Callable[[Entry[T]], Any]) -> None:
        """Reorder the entries (stable): `list` and suites' "all methods" follow this order."""
        self._entries = dict(sorted(self._entries.items(), key=lambda item: key(item[1])))

    def get(self, name: str) -> Entry[T]:
        self._discovered()
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(
                f"unknown {self.kind} '{name}': {did_you_mean(name, self.names())}") from None

    def names(self) -> list[str]:
        self._discovered()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._discovered()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        self._discovered()
        return iter(list(self._entries.values()))
