"""Planning: a resolved suite config -> its cells (method x dataset x shot x seed x sweep
point), each with its config hash and record path. Pure: nothing here loads data or trains."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dfmlbench.config import SMOKE_PROFILE, assign, config_hash, sweep_points
from dfmlbench.data import settings_entry
from dfmlbench.data.multidomain import MEMBERS as MULTIDOMAIN_MEMBERS
from dfmlbench.errors import UserError
from dfmlbench.method import Method
from dfmlbench.methods import METHODS, create_method, free_settings
from dfmlbench.pool import MIXED, MIXED_ARCHITECTURES, TWIN_SELECT, PoolSpec
from dfmlbench.records import record_stem
from dfmlbench.registry import did_you_mean


PROTOCOL_OFF = {"lr_grid": None, "max_over_test": False}  # protocol keys added after records existed


@dataclass
class Cell:
    method: Method
    dataset: str
    shot: int
    seed: int
    config: dict[str, Any]
    hash: str
    sweep: dict[str, Any] = field(default_factory=dict)  # this cell's values of the swept settings
    overrides: dict[str, Any] = field(default_factory=dict)  # the run's --set KEY=VALUE, as given

    def identity(self) -> dict[str, Any]:
        """The fields that open the cell's record: what it is, and its config hash."""
        protocol = self.config["protocol"]
        return {"status": "ok", "config_hash": self.hash, "suite": self.config["suite"]["name"],
                "profile": self.config["profile"], "method": self.method.name, "dataset": self.dataset,
                "way": protocol["way"], "shot": self.shot, "query": protocol["query"], "seed": self.seed}

    @property
    def label(self) -> str:
        swept = "".join(f" {key}={value}" for key, value in self.sweep.items())
        return (f"{self.method.name} {self.dataset} {self.config['protocol']['way']}w{self.shot}s "
                f"seed {self.seed}{swept}")


def _build_method(name: str, config: dict[str, Any], unused: set[str]) -> Method:
    """Settings, lowest priority first: the method's own smoke settings (under the `smoke`
    profile only), the paper budget scaled by `budget_fraction` (under `smoke`, at most the
    smoke budget: smoke means seconds), the base method's block (e.g. `free`, for all its
    variants, less what a variant fixes), the entry's own block, then `--set method.KEY`."""
    free = free_settings(name)
    method_class = METHODS.get(name).load()
    base = method_class.name
    fraction = config.get("budget_fraction")
    smoke = method_class.smoke_settings if config["profile"] == SMOKE_PROFILE else {}
    settings = {k: v for k, v in smoke.items() if k in free}
    if fraction is not None:
        settings.update({k: min(v, smoke.get(k, v)) for k, v in method_class.budget_at(fraction).items() if k in free})
    settings.update({k: v for k, v in (config["method_settings"].get(base) or {}).items() if k in free})
    settings.update(config["method_settings"].get(name) or {})
    for key, value in config.get("method_overrides", {}).items():
        if key in free:  # `--set method.KEY` skips methods (variants) that fix KEY
            settings[key] = value
            unused.discard(key)
    return create_method(name, settings)


def expand_cells(config: dict[str, Any], methods: list[str] | None = None) -> list[Cell]:
    """Method cells at every sweep point; a method the sweep does not touch (e.g. Random under
    a pool-size sweep) gets the same cell, by hash, at each point and runs once."""
    names = methods or config["methods"]
    if not names:
        if config.get("analyses"):
            return []
        raise UserError("no methods to run: pass --method NAME or list methods in the suite")
    cells: list[Cell] = []
    for point in sweep_points(config):
        swept = copy.deepcopy(config)
        for key, value in point.items():
            assign(swept, key, value)
        cells += [replace(cell, sweep=point, overrides=dict(config.get("overrides", {})))
                  for cell in _expand_point(swept, names)]
    return cells


def _expand_point(config: dict[str, Any], names: list[str]) -> list[Cell]:
    unknown = sorted(set(config["method_settings"]) - set(METHODS.names()))
    if unknown:
        raise UserError(f"method_settings names an unknown method '{unknown[0]}': "
                        f"{did_you_mean(unknown[0], METHODS.names())}")
    unused = set(config.get("method_overrides", {}))
    built = [_build_method(name, config, unused) for name in names]
    if unused:
        key = sorted(unused)[0]
        known = sorted(set().union(*(free_settings(n) for n in names)))
        hint = did_you_mean(key, known) if known else "they take no settings"
        raise UserError(f"--set method.{key}: none of the methods run ({', '.join(names)}) "
                        f"has that setting free to change; {hint}")
    # Optional keys left at their off values stay out of the cell config, so older hashes remain valid.
    protocol = {k: v for k, v in config["protocol"].items() if not (k in PROTOCOL_OFF and v == PROTOCOL_OFF[k])}
    cells = []
    for method in built:
        pool = {**config["pool"], **method.pool_settings()}
        for dataset in config["datasets"]:
            _check_pool_fits_method(method, dataset, pool)
            for shot in config["shots"]:
                for seed in config["seeds"]:
                    cell_config = {
                        "suite": config["suite"], "profile": config["profile"],
                        "method": {"name": method.name, "settings": method.recorded_settings()},
                        "dataset": dataset, **settings_entry(config, dataset),
                        "shot": int(shot), "seed": int(seed), "protocol": protocol, "learner": config["learner"],
                        "runtime": config["runtime"],
                    }
                    if method.uses_teachers:
                        cell_config["pool"] = pool
                    if config.get("budget_fraction") is not None:  # absent: older hashes stay valid
                        cell_config["budget_fraction"] = config["budget_fraction"]
                    cells.append(Cell(method, dataset, int(shot), int(seed), cell_config,
                                      config_hash(cell_config)))
    return cells


def _check_pool_fits_method(method: Method, dataset: str, pool: dict[str, Any]) -> None:
    """Methods that start from teacher weights, refused before any pool is built where the
    pool cannot give them one architecture to copy (a brought-in pool is checked on loading)."""
    if method.copies_teacher_weights and dataset in MULTIDOMAIN_MEMBERS:
        raise UserError(f"{method.name} starts the meta-learner from teacher weights, which the multi-domain "
                        f"dataset '{dataset}' cannot give (its teachers see the shared images through a wrapper, "
                        "its learner is conv4-any); run it on each domain's own dataset")
    if method.fuses_weights and pool["arch"] == MIXED and not pool["path"]:
        raise UserError(f"{method.name} fuses teacher weights element-wise, so it needs one architecture; "
                        f"pool.arch={MIXED} mixes {', '.join(MIXED_ARCHITECTURES)}: set pool.arch to one of them")


def cell_stem(out_dir: Path, cell: Cell) -> Path:
    return record_stem(out_dir, cell.config["suite"]["name"], cell.config["profile"], cell.method.name,
                       cell.dataset, cell.config["protocol"]["way"], cell.shot, cell.seed, cell.hash)


def unique_cells(cells: list[Cell], out_dir: Path) -> list[Cell]:
    """The first of the cells that share a record (a method a sweep leaves untouched), in order."""
    first = {cell_stem(out_dir, cell): cell for cell in reversed(cells)}
    return [cell for cell in cells if first.get(cell_stem(out_dir, cell)) is cell]


def shard(cells: list[Cell], out_dir: Path, index: int, count: int) -> list[Cell]:
    """Shard `index` of `count` (1-based) of the suite's distinct cells: every count-th in plan
    order, so each shard keeps the same cells however far the others have run."""
    return unique_cells(cells, out_dir)[index - 1::count]


def parse_shard(text: str) -> tuple[int, int]:
    """`--shard i/N` as (i, N), 1 <= i <= N."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise UserError(f"--shard {text!r} is not i/N with 1 <= i <= N (e.g. --shard 2/4)")
    return int(index), int(count)


def pool_identity(cell: Cell, spec: PoolSpec) -> tuple[str, str, str]:
    """What names one cached pool across cells: the dataset, its settings, the pool spec."""
    return cell.dataset, repr(cell.config.get("dataset_settings")), repr(spec)


def twinned_pools(cells: list[Cell]) -> frozenset[tuple[str, str, str]]:
    """The cached pools of these cells whose twin (the same pool with the other `select`, as
    table2's `free-official` uses) some other cell uses: one build fills both (`build_pool`)."""
    specs = {}
    for cell in cells:
        if cell.method.uses_teachers and not cell.config["pool"].get("path"):
            spec = PoolSpec.from_config(cell.config["pool"])
            specs[pool_identity(cell, spec)] = spec
    return frozenset(identity for identity, spec in specs.items()
                     if (*identity[:2], repr(replace(spec, select=TWIN_SELECT[spec.select]))) in specs)
