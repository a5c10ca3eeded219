"""The paper's published numbers (package data), looked up per method, dataset and shot."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import yaml

from dfmlbench.errors import UserError
from dfmlbench.paths import PACKAGE_DIR
from dfmlbench.registry import did_you_mean

PAPER_VALUES = PACKAGE_DIR / "reporting" / "paper_values.yaml"


@dataclass(frozen=True)
class PaperTable:
    name: str
    caption: str
    device: str
    values: dict[str, dict[str, dict[Any, Any]]]

    def accuracy(self, method: str, dataset: str, shot: int) -> tuple[float, float] | None:
        cell = self.values.get(method, {}).get(dataset, {}).get(shot)
        return (float(cell[0]), float(cell[1])) if cell else None

    def hours(self, method: str, dataset: str) -> float | None:
        value = self.values.get(method, {}).get(dataset, {}).get("time_h")
        return float(value) if value is not None else None


@lru_cache(maxsize=None)
def _all_tables() -> dict[str, Any]:
    return yaml.safe_load(PAPER_VALUES.read_text())


def display_name(method: str) -> str:
    """The name a method registered to be shown by (the paper's), with dfmlbench's in brackets
    ("FREE_5 (free)"); just dfmlbench's where it registered none or is not registered."""
    from dfmlbench.methods import METHODS
    shown = METHODS.get(method).display if method in METHODS else ""
    return f"{shown} ({method})" if shown else method


def paper_table(name: str) -> PaperTable:
    tables = _all_tables()
    if name not in tables:
        raise UserError(f"unknown paper table '{name}': {did_you_mean(name, sorted(tables))}")
    raw = tables[name]
    return PaperTable(name, raw["caption"], raw["device"], raw["values"])
