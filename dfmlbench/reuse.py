"""`run --reuse FOLDER`: a cell that a record under FOLDER already computed is copied from it
instead of being run again. "Already computed" means the same config but for the suite's and
profile's names (`config.computation_key`): fig7's FREE cell is table2's, and every cell of the
`free` suite's cpu profile is table2's or table5's.

The copy is the cell's own record under this suite (its config, config hash and names) with
the original's results, timings, environment and dates, which describe that measurement, and
`reused_from` naming it. The per-episode accuracies, saved learner, events, log and artifacts
come along; checkpoints do not (the cell is finished)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dfmlbench.config import computation_key, config_hash
from dfmlbench.errors import UserError
from dfmlbench.events import events_path, log_path
from dfmlbench.learner_store import learner_path
from dfmlbench.paths import write_bytes_atomic
from dfmlbench.planning import Cell
from dfmlbench.records import finished_record, parse_record, write_record

ARTIFACTS_SUFFIX = ".artifacts"
NOT_COPIED = (".pt",)  # checkpoints: a finished cell resumes from nothing


@dataclass(frozen=True)
class Source:
    """A finished record that may stand in for a cell, and the --reuse folder it was found in."""

    stem: Path
    record: dict[str, Any]
    folder: str


class ReuseIndex:
    """The finished method records under the --reuse folders, by computation key; the first
    found (folders in the order given, files in name order) wins."""

    def __init__(self, folders: list[str]) -> None:
        self.folders = folders
        self.sources: dict[str, list[Source]] = {}
        for folder in folders:
            if not Path(folder).is_dir():
                raise UserError(f"--reuse {folder}: no such folder; pass a records folder (a run's --out, "
                                "or a committed report's records/)")
            for path in sorted(Path(folder).rglob("*.json")):
                source = _source(path, folder)
                if source is not None:
                    self.sources.setdefault(computation_key(source.record["config"]), []).append(source)

    def __len__(self) -> int:
        return sum(len(sources) for sources in self.sources.values())

    def find(self, cell: Cell, made_on_same_inputs: Callable[[dict[str, Any]], bool]) -> Source | None:
        """The first record that computed the cell on the same data and pool as this run's."""
        for source in self.sources.get(computation_key(cell.config), []):
            if made_on_same_inputs(source.record):
                return source
        return None


def _source(path: Path, folder: str) -> Source | None:
    """A finished method record whose config still gives its hash (an edited one does not)."""
    record, _ = parse_record(path)
    config = (record or {}).get("config")
    if not isinstance(config, dict) or "method" not in record or "fit" in config:  # analyses, evaluations
        return None
    try:
        if config_hash(config) != record.get("config_hash"):
            return None
    except (KeyError, TypeError):
        return None
    stem = path.with_suffix("")
    finished, _ = finished_record(stem, record["config_hash"])
    return Source(stem, finished, folder) if finished is not None else None


def adopt(source: Source, cell: Cell, stem: Path) -> dict[str, Any]:
    """Copy `source` to the cell's `stem` as the cell's record; the JSON last, as a run writes it."""
    original = source.record
    for path_of in (learner_path, events_path, log_path):
        if path_of(source.stem).is_file():
            write_bytes_atomic(path_of(stem), path_of(source.stem).read_bytes())
    artifacts = source.stem.with_suffix(ARTIFACTS_SUFFIX)
    if artifacts.is_dir():
        for file in sorted(p for p in artifacts.rglob("*") if p.is_file() and p.suffix not in NOT_COPIED):
            write_bytes_atomic(stem.with_suffix(ARTIFACTS_SUFFIX) / file.relative_to(artifacts), file.read_bytes())
    per_episode = np.load(source.stem.parent / original["per_episode_file"], allow_pickle=False)
    record = {
        **original, **cell.identity(),
        "sweep": cell.sweep, "overrides": cell.overrides, "config": cell.config,
        "events_file": events_path(stem).name if events_path(source.stem).is_file() else None,
        "learner_file": learner_path(stem).name if original.get("learner_file") else None,
        "reused_from": {"suite": original.get("suite"), "profile": original.get("profile"),
                        "config_hash": original["config_hash"], "record": str(source.stem.with_suffix(".json")),
                        "folder": source.folder, "via": original.get("reused_from")},
    }
    write_record(stem, record, per_episode)
    return record


def reused_label(record: dict[str, Any] | None) -> str | None:
    """'table2/cpu' for a record copied from table2's cpu profile, else None."""
    origin = (record or {}).get("reused_from")
    return f"{origin.get('suite')}/{origin.get('profile')}" if isinstance(origin, dict) else None
