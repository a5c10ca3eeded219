"""`python -m dfmlbench results`: every record under a runs folder as one pandas DataFrame, one
row per cell, with its sweep values and the user's `--set` overrides as columns, so that no one
has to decode a config hash to tell two records apart."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from dfmlbench.errors import UserError
from dfmlbench.records import parse_record

FIXED_COLUMNS = ["suite", "profile", "method", "dataset", "way", "shot", "query", "seed"]
RESULT_COLUMNS = ["accuracy", "ci95", "episodes", "recovery_s", "fit_s", "wall_s", "status", "overrides_from",
                  "config_hash", "record"]


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flat(value, f"{prefix}{key}."))
    return flat


@lru_cache(maxsize=None)
def _suite_cells(suite: str, version: int, profile: str, method: str) -> dict[tuple, dict[str, Any]] | None:
    """The cells the suite plans now for `method`, by (dataset, shot, seed, sweep), when the
    suite still has the record's version (else None: today's suite says nothing of it)."""
    from dfmlbench.config import load_suite, resolve
    from dfmlbench.planning import expand_cells
    try:
        loaded = load_suite(suite)
        if loaded.version != version:
            return None
        cells = expand_cells(resolve(loaded, profile, []), [method])
    except UserError:
        return None
    return {(c.dataset, c.shot, c.seed, tuple(sorted(c.sweep.items()))): c.config for c in cells}


def overrides_of(record: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The record's `--set` overrides, and where they come from: the record itself, or (for a
    record made before records kept them) its config set against the one its suite plans."""
    if isinstance(record.get("overrides"), dict):
        return dict(record["overrides"]), "record"
    config, suite = record.get("config") or {}, record.get("config", {}).get("suite") or {}
    planned = _suite_cells(suite.get("path") or suite.get("name", ""), suite.get("version", -1),
                           record.get("profile", ""), record.get("method", ""))
    if planned is None:
        return {}, "unknown"
    key = (record.get("dataset"), record.get("shot"), record.get("seed"),
           tuple(sorted((record.get("sweep") or {}).items())))
    if key not in planned:
        return {}, "unknown"
    ours, theirs = _flat(config), _flat(planned[key])
    changed = {k: v for k, v in ours.items() if theirs.get(k, object()) != v and not k.startswith("suite.")}
    return changed, "config vs suite"


def _row(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    accuracy, timings = record.get("accuracy") or {}, record.get("timings") or {}
    config = record.get("config") or {}
    record = {"suite": (config.get("suite") or {}).get("name"), "profile": config.get("profile"),
              "way": (config.get("protocol") or {}).get("way"), **record}  # a failed record keeps only its config
    overrides, source = overrides_of(record)
    recovery = timings.get("recovery_seconds")
    fit = timings.get("meta_train_seconds")
    return {
        **{column: record.get(column) for column in FIXED_COLUMNS},
        **(record.get("sweep") or {}), **{k: v for k, v in overrides.items() if k not in (record.get("sweep") or {})},
        "accuracy": accuracy.get("mean"), "ci95": accuracy.get("ci95"), "episodes": accuracy.get("n"),
        "recovery_s": recovery, "fit_s": None if fit is None else fit + (recovery or 0),
        "wall_s": timings.get("wall_seconds"), "status": record.get("status"), "overrides_from": source,
        "config_hash": record.get("config_hash"), "record": str(path),
    }


def results_frame(runs: Path, suite: str | None = None) -> pd.DataFrame:
    """One row per record (finished or failed) under `runs`, in path order."""
    rows = []
    for path in sorted(Path(runs).rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(runs).parts):
            continue  # locks, checkpoints' hidden files
        record, _ = parse_record(path)
        if not record or "config_hash" not in record or "method" not in record:
            continue  # analysis records and other JSON files
        row = _row(path, record)
        if suite is None or row["suite"] == suite:
            rows.append(row)
    frame = pd.DataFrame(rows).convert_dtypes()  # a count swept in some rows stays an integer
    if frame.empty:
        return pd.DataFrame(columns=FIXED_COLUMNS + RESULT_COLUMNS)
    swept = [c for c in frame.columns if c not in FIXED_COLUMNS + RESULT_COLUMNS]
    return frame[FIXED_COLUMNS + sorted(swept) + RESULT_COLUMNS]
