"""What `plan` shows before anything runs: each cell's status in a records folder, the pools it
needs, and what it will cost (measured on records of the same settings, else the paper's
Time column scaled to the cell's budget)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dfmlbench.config import computation_key
from dfmlbench.data import load_dataset
from dfmlbench.data.multidomain import MultiDomainDataset
from dfmlbench.errors import UserError
from dfmlbench.locks import is_held
from dfmlbench.planning import Cell, cell_stem, twinned_pools, unique_cells
from dfmlbench.pool import MANIFEST, TWIN_SELECT, PoolSpec, cache_folder
from dfmlbench.records import failed_path, finished_record, parse_record
from dfmlbench.reporting.paper import paper_table
from dfmlbench.reuse import ReuseIndex

STATUSES = ("done", "running", "failed", "reusable", "pending")


def cell_status(stem: Path, cell: Cell, out_dir: Path) -> str:
    """done: a finished record of this hash; running: another process holds the cell's lock;
    failed: its last attempt crashed; pending: none of these."""
    if finished_record(stem, cell.hash)[0] is not None:
        return "done"
    if is_held(stem, out_dir):
        return "running"
    return "failed" if failed_path(stem).is_file() else "pending"


@dataclass(frozen=True)
class Estimate:
    seconds: float | None
    source: str  # "measured (n records)", "paper Time x budget share", or "none"

    def text(self) -> str:
        if self.seconds is None:
            return "-"
        hours = self.seconds / 3600
        return f"{hours:.2f} h" if hours >= 0.1 else f"{self.seconds / 60:.1f} min"


def settings_key(config: dict[str, Any]) -> str:
    """What a cell computes with its seed left out: records of other seeds of the same settings,
    under any suite or profile name, measure what this cell will cost."""
    unseeded = copy.deepcopy(config)
    unseeded.pop("seed", None)
    return computation_key(unseeded)


def measured_seconds(folders: list[Path]) -> dict[str, list[float]]:
    """Wall seconds of every finished record under the records `folders`, by settings key."""
    found: dict[str, list[float]] = {}
    for path in sorted(p for folder in folders for p in Path(folder).glob("*/*/*/*.json")):
        record, _ = parse_record(path)
        if not record or record.get("status") != "ok" or not isinstance(record.get("config"), dict):
            continue
        seconds = (record.get("timings") or {}).get("wall_seconds")
        if isinstance(seconds, (int, float)):
            found.setdefault(settings_key(record["config"]), []).append(float(seconds))
    return found


def estimate(cell: Cell, measured: dict[str, list[float]]) -> Estimate:
    runs = measured.get(settings_key(cell.config))
    if runs:
        return Estimate(sum(runs) / len(runs), f"measured ({len(runs)} record{'s' * (len(runs) > 1)})")
    table = paper_table("table2")
    hours = table.hours(cell.method.name, cell.dataset)
    if hours is None:
        hours = table.hours(type(cell.method).name, cell.dataset)  # a variant: its base method's
    share = cell.method.paper_share()
    if hours is None or share is None:
        return Estimate(None, "none")
    return Estimate(hours * share * 3600, "paper Time x budget share")


@dataclass(frozen=True)
class PoolNeed:
    dataset: str
    spec: PoolSpec
    options: tuple[tuple[str, Any], ...] = ()  # the dataset's settings (dataset_settings), if it takes any

    @classmethod
    def of(cls, cell: Cell) -> "PoolNeed | None":
        """The pool a cell needs (None: its method uses no teachers)."""
        if not cell.method.uses_teachers:
            return None
        options = tuple(sorted(cell.config.get("dataset_settings", {}).items()))
        return cls(cell.dataset, PoolSpec.from_config(cell.config["pool"]), options)

    def select_twin(self) -> "PoolNeed":
        """The same pool with the other `select` (table2's free-official keeps the last epoch's
        weights of the teachers whose best epoch's weights the other methods use): one training
        run fills both (`build_pool`)."""
        return replace(self, spec=replace(self.spec, select=TWIN_SELECT[self.spec.select]))

    @property
    def label(self) -> str:
        s = self.spec
        data = self.dataset + (f" ({', '.join(f'{k} {v}' for k, v in self.options)})" if self.options else "")
        if s.path:
            return f"{data}: brought-in pool {s.path} ({s.num_teachers} teachers)"
        return (f"{data}: {s.num_teachers} x {s.arch} {s.way}-way, {s.epochs} epochs, seed {s.seed}, "
                f"{s.select} epoch's weights")

    def state(self, data_root: str | None) -> str:
        """How many of its teachers the cache holds (needs the dataset on disk)."""
        if self.spec.path:
            return "brought in"
        try:
            dataset = load_dataset(self.dataset, data_root, False, dict(self.options))
        except UserError:
            return "unknown (the dataset is not on this machine)"
        if isinstance(dataset, MultiDomainDataset):
            return "one pool per domain, built with the first cell"
        folder = cache_folder(dataset, self.spec)
        if not (folder / MANIFEST).is_file():
            return "not built"
        have = len(json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("teachers", []))
        return "built" if have >= self.spec.num_teachers else f"{have}/{self.spec.num_teachers} teachers built"


@dataclass(frozen=True)
class PlannedCell:
    cell: Cell
    stem: Path
    status: str
    pool: PoolNeed | None
    estimate: Estimate


def plan(cells: list[Cell], out_dir: Path, reuse: ReuseIndex | None = None) -> list[PlannedCell]:
    """Each distinct cell's status; with `reuse`, a cell not done here that a record under the
    --reuse folders computed is "reusable" (`run --reuse` copies it in if it was made on this
    run's data and pool, which `run` checks)."""
    measured = measured_seconds([out_dir, *(reuse.folders if reuse is not None else [])])
    planned = []
    for cell in unique_cells(cells, out_dir):
        stem = cell_stem(out_dir, cell)
        status = cell_status(stem, cell, out_dir)
        if status in ("pending", "failed") and reuse is not None and reuse.find(cell, lambda record: True):
            status = "reusable"
        planned.append(PlannedCell(cell, stem, status, PoolNeed.of(cell), estimate(cell, measured)))
    return planned


def plan_table(planned: list[PlannedCell], data_root: str | None) -> str:
    rows = ["| # | cell | status | hash | estimate | estimated from |", "|---|---|---|---|---|---|"]
    for index, p in enumerate(planned, 1):
        rows.append(f"| {index} | {p.cell.label} | {p.status} | {p.cell.hash} | {p.estimate.text()} | "
                    f"{p.estimate.source} |")
    counts = ", ".join(f"{sum(p.status == s for p in planned)} {s}" for s in STATUSES
                       if s != "reusable" or any(p.status == s for p in planned))  # only with --reuse
    todo = [p for p in planned if p.status not in ("done", "reusable")]
    known = [p.estimate.seconds for p in todo if p.estimate.seconds is not None]
    unknown = len(todo) - len(known)
    total = Estimate(sum(known), "") if known else Estimate(None, "")
    lines = ["\n".join(rows), "", f"{len(planned)} cell(s): {counts}.",
             f"Estimated cost of the {len(todo)} not done: {total.text()}"
             + (f" plus {unknown} cell(s) without an estimate" if unknown else "")
             + " (paper-based estimates count data recovery only, on one RTX 3090)."]
    pools = list(dict.fromkeys(p.pool for p in planned if p.pool is not None))
    if pools:
        lines += ["", "Teacher pools (built once, before their cells):"]
        lines += [f"- {need.label}: {need.state(data_root)}" for need in pools]
        if twinned_pools([p.cell for p in planned]):
            lines.append("  (pools that differ only in which epoch's weights they keep come from one training "
                         "run: the first one built fills the other)")
    if planned:
        lines += ["", f"Records: {planned[0].stem.parents[1]}/<method>/<dataset>-<way>w<shot>s-seed<seed>-<hash>.json"]
    return "\n".join(lines)


def plan_json(planned: list[PlannedCell], data_root: str | None) -> list[dict[str, Any]]:
    states: dict[PoolNeed, str] = {}
    return [{
        "method": p.cell.method.name, "dataset": p.cell.dataset, "shot": p.cell.shot, "seed": p.cell.seed,
        "sweep": p.cell.sweep, "config_hash": p.cell.hash, "record": str(p.stem.with_suffix(".json")),
        "status": p.status, "estimate_seconds": p.estimate.seconds, "estimate_source": p.estimate.source,
        "pool": None if p.pool is None else {
            "label": p.pool.label, "state": states.setdefault(p.pool, p.pool.state(data_root))},
    } for p in planned]
