"""Analysis cells: a suite's `analyses` run once per dataset x seed on its teacher pool and
write a record (JSON last, atomically) with their arrays in an .npz beside it."""

from __future__ import annotations

import datetime as dt
import inspect
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfmlbench.config import config_hash
from dfmlbench.data import cell_dataset, settings_entry
from dfmlbench.errors import UserError, note
from dfmlbench.paths import save_npz_atomic
from dfmlbench.pool import PoolSpec, obtain_pool
from dfmlbench.records import AnalysisRecord, environment, finished_record, write_record
from dfmlbench.registry import Registry, did_you_mean
from dfmlbench.schema import choice, rule_from_default

ANALYSES: Registry[Any] = Registry("analysis")
ANALYSES.register("teacher-features", "dfmlbench.analysis.teacher_features:teacher_features",
                  summary="Fig. 4: features of the same images through several teachers (for a t-SNE)")


@dataclass
class AnalysisCell:
    analysis: str
    dataset: str
    seed: int
    settings: dict[str, Any]
    config: dict[str, Any]
    hash: str

    @property
    def label(self) -> str:
        return f"{self.analysis} {self.dataset} seed {self.seed}"


def expand_analysis_cells(config: dict[str, Any]) -> list[AnalysisCell]:
    unknown = sorted(set(config["analysis_settings"]) - set(ANALYSES.names()))
    if unknown:
        ANALYSES.get(unknown[0])  # raises the did-you-mean error
    cells = []
    for name in config["analyses"]:
        settings = typed_settings(name, dict(config["analysis_settings"].get(name) or {}))
        for dataset in config["datasets"]:
            for seed in config["seeds"]:
                cell_config = {"suite": config["suite"], "profile": config["profile"],
                               "analysis": {"name": name, "settings": settings},
                               "dataset": dataset, **settings_entry(config, dataset),
                               "seed": int(seed), "pool": config["pool"],
                               "runtime": config["runtime"]}
                cells.append(AnalysisCell(name, dataset, int(seed), settings, cell_config,
                                          config_hash(cell_config)))
    return cells


# Settings every analysis receives from the runner, not from the suite.
RUNNER_ARGUMENTS = ("pool", "dataset", "seed", "device")


def typed_settings(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """An analysis's settings are its function's keyword arguments, typed from their defaults
    (a `Literal[...]` annotation: one of its values)."""
    function = ANALYSES.get(name).load()
    parameters, hints = inspect.signature(function).parameters, typing.get_type_hints(function)
    defaults = {k: p.default for k, p in parameters.items()
                if k not in RUNNER_ARGUMENTS and p.default is not inspect.Parameter.empty}
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise UserError(f"analysis '{name}' has no setting '{unknown[0]}': {did_you_mean(unknown[0], list(defaults))}")
    for key, value in settings.items():
        literal = typing.get_origin(hints.get(key)) is typing.Literal
        rule = choice(typing.get_args(hints[key])) if literal else rule_from_default(key, defaults[key])
        if rule is not None:
            settings[key] = rule.apply(f"analysis_settings.{name}.{key}", value)
    return settings


def analysis_stem(out_dir: Path, cell: AnalysisCell) -> Path:
    suite = cell.config["suite"]["name"]
    return (Path(out_dir) / suite / cell.config["profile"] / f"analysis-{cell.analysis}"
            / f"{cell.dataset}-seed{cell.seed}-{cell.hash}")


def run_analysis_cell(cell: AnalysisCell, out_dir: Path, force: bool = False) -> tuple[str, dict[str, Any]]:
    """("recorded" | "ran", record). Bad settings are the user's error, in one line."""
    from dfmlbench.runner import resolve_device

    stem = analysis_stem(out_dir, cell)
    recorded, problem = finished_record(stem, cell.hash, "arrays_file")
    if recorded is not None and not force:
        return "recorded", recorded
    if problem is not None and not force:
        note(f"{stem.with_suffix('.json')}: {problem}; the analysis runs again")
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    wall = time.perf_counter()
    runtime = cell.config["runtime"]
    device = resolve_device(runtime["device"])
    dataset = cell_dataset(cell.config)
    pool = obtain_pool(dataset, PoolSpec.from_config(cell.config["pool"]), device)
    function = ANALYSES.get(cell.analysis).load()
    result = function(pool, dataset, seed=cell.seed, device=device, **cell.settings)  # settings typed at expansion
    arrays = {k: np.asarray(v) for k, v in vars(result).items() if isinstance(v, np.ndarray)}
    info = {k: v for k, v in vars(result).items() if not isinstance(v, np.ndarray)}
    arrays_file = stem.with_suffix(".arrays.npz")
    save_npz_atomic(arrays_file, **arrays)
    record: AnalysisRecord = {
        "status": "ok", "config_hash": cell.hash, "suite": cell.config["suite"]["name"],
        "profile": cell.config["profile"], "analysis": cell.analysis, "dataset": cell.dataset,
        "seed": cell.seed, "info": info, "arrays_file": arrays_file.name,
        "pool": {"key": pool.key, "num_teachers": len(pool), "architectures": pool.architectures},
        "timings": {"wall_seconds": time.perf_counter() - wall},
        "config": cell.config, "environment": environment(device), "started_at": started_at,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_record(stem, record, None)
    return "ran", record
