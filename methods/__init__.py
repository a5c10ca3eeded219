"""DFML methods, one self-describing module each; installed as `dfmlbench.methods`.

A method registers itself with the `register` decorator in its own module, its variants (a
base method plus fixed settings, shown in `list`, records and tables like a method) beside it.
The registry imports the built-in modules, then every module named in the `dfmlbench.methods`
entry-point group, on its first lookup: a package outside this repository adds methods with

    [project.entry-points."dfmlbench.methods"]
    my-method = "my_package.my_method"    # a module whose import registers its methods
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

from dfmlbench.errors import UserError
from dfmlbench.method import Method
from dfmlbench.registry import Registry

BUILTIN_MODULES = ("random_init", "best_model", "average", "random_scaled", "ota", "dro", "free", "purer", "bidf_mkd")
ENTRY_POINT_GROUP = "dfmlbench.methods"
M = TypeVar("M", bound=type[Method])


def _builtin_rank(entry: Any) -> int:
    """The built-in modules' order (whichever was imported first), then plug-ins."""
    module = getattr(entry.target, "__module__", "").rpartition(".")[2]
    return BUILTIN_MODULES.index(module) if module in BUILTIN_MODULES else len(BUILTIN_MODULES)


def _discover() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(f"dfmlbench.methods.{module}")
    METHODS.sort(_builtin_rank)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as exc:  # a broken plug-in is named in one line, not a traceback
            raise UserError(f"method plug-in '{point.name}' ({point.value}) failed to load: "
                            f"{type(exc).__name__}: {exc}; fix or uninstall its package") from None


METHODS: Registry[type[Method]] = Registry("method", _discover)


@dataclass(frozen=True)
class Variant:
    """A registered variant: fixed settings of the base method, a summary, a display name."""

    settings: dict[str, Any]
    summary: str
    display: str = ""


def register(name: str, summary: str, display: str = "",
             variants: dict[str, Variant] | None = None) -> Callable[[M], M]:
    """Class decorator: register a Method subclass under `name` (its `name` attribute is set),
    and each of its variants. `display` is how tables name it ("FREE_5" shows "FREE_5 (free)")."""
    def decorate(cls: M) -> M:
        cls.name = name
        METHODS.register(name, cls, summary=summary, display=display)
        for variant_name, variant in (variants or {}).items():
            METHODS.register(variant_name, cls, variant.settings, variant.summary, variant.display)
        return cls
    return decorate


def free_settings(name: str) -> set[str]:
    """The settings a user may change on this entry (those a variant does not fix)."""
    entry = METHODS.get(name)
    return set(entry.load().defaults) - set(entry.settings)


def create_method(name: str, overrides: dict[str, Any] | None = None) -> Method:
    """Instantiate a registered method or variant with user overrides of its free settings."""
    entry = METHODS.get(name)
    overrides = dict(overrides or {})
    fixed = sorted(set(overrides) & set(entry.settings))
    if fixed and any(overrides[k] != entry.settings[k] for k in fixed):
        raise UserError(f"'{fixed[0]}' is fixed by the variant '{name}'; "
                        "override it on the base method instead")
    method = entry.load()(**{**entry.settings, **overrides})
    method.name = name
    return method


__all__ = ["METHODS", "Variant", "create_method", "register"]
