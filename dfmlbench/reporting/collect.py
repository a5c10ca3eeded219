"""Find the records a report is made of: exactly the cells `run` would make for the same suite,
profile and overrides, so a table never mixes profiles or stale configurations."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfmlbench.analysis.cells import AnalysisCell, analysis_stem, expand_analysis_cells
from dfmlbench.config import Suite
from dfmlbench.errors import UserError, note
from dfmlbench.records import finished_record, load_per_episode, method_label
from dfmlbench.reporting.paper import display_name
from dfmlbench.planning import Cell, cell_stem, expand_cells
from dfmlbench.stats import Z95, summarize


@dataclass
class Found:
    """A method cell and its record (None when it has not run, or failed)."""

    cell: Cell
    path: Path
    record: dict[str, Any] | None

    def per_episode(self) -> np.ndarray:
        return load_per_episode(self.path)


@dataclass
class FoundAnalysis:
    cell: AnalysisCell
    path: Path
    record: dict[str, Any] | None

    def arrays(self) -> dict[str, np.ndarray]:
        assert self.record is not None
        with np.load(self.path.parent / self.record["arrays_file"], allow_pickle=False) as data:
            return {k: data[k] for k in data.files}


def _finished(path: Path, config_hash: str, companion: str) -> dict[str, Any] | None:
    """A finished record, as `run` decides it; a damaged one is noted and shown as missing."""
    record, problem = finished_record(path.with_suffix(""), config_hash, companion)
    if problem is not None:
        note(f"{path}: {problem}; the cell counts as missing (rerun it with `run`)")
    return record


def _evaluations(config: dict[str, Any], suite: Suite | None, fit_shot: int | None) -> dict[str, Any]:
    """Planned cell hash -> its evaluation (dfmlbench.evaluate), when the overrides change the
    meta-test protocol (or name a fit shot); else none."""
    from dfmlbench.evaluate import EVALUATION_PREFIX, plan_evaluations

    overrides = list((config.get("overrides") or {}).items())
    if suite is None or (fit_shot is None and not any(k.startswith(EVALUATION_PREFIX) for k, _ in overrides)):
        return {}
    return {e.planned_hash: e for e in plan_evaluations(suite, config["profile"], overrides, None, fit_shot)}


def _same_data(found: list[Found]) -> None:
    """Records of one dataset made on different copies of it must not share a table."""
    first: dict[str, tuple[str, Path]] = {}
    for item in found:
        if item.record is None:
            continue
        fingerprint = item.record.get("dataset_fingerprint")
        seen = first.setdefault(item.cell.dataset, (fingerprint, item.path))
        if seen[0] != fingerprint:
            raise UserError(f"records of {item.cell.dataset} were made on different data: {seen[1]} "
                            f"(fingerprint {seen[0]}) and {item.path} ({fingerprint}); rerun one of them "
                            "on the other's data, or report them from separate --runs folders")


def collect(config: dict[str, Any], runs_dir: Path, suite: Suite | None = None,
            fit_shot: int | None = None) -> tuple[list[Found], list[FoundAnalysis]]:
    """The planned cells' records; where a cell has none, an `evaluate` record of it (a saved
    learner under this protocol) counts, when the overrides change the protocol."""
    cells = expand_cells(config)
    evaluations = _evaluations(config, suite, fit_shot)
    found, seen = [], set()
    for cell in cells:
        path = cell_stem(runs_dir, cell).with_suffix(".json")
        key = (path, tuple(cell.sweep.items()))
        if key not in seen:
            seen.add(key)
            record = _finished(path, cell.hash, "per_episode_file")
            evaluation = evaluations.get(cell.hash)
            if record is None and evaluation is not None:
                other = cell_stem(runs_dir, evaluation.cell).with_suffix(".json")
                if other.is_file():
                    path, record = other, _finished(other, evaluation.cell.hash, "per_episode_file")
            found.append(Found(cell, path, record))
    _same_data(found)
    analyses = []
    for cell in expand_analysis_cells(config):
        path = analysis_stem(runs_dir, cell).with_suffix(".json")
        analyses.append(FoundAnalysis(cell, path, _finished(path, cell.hash, "arrays_file")))
    return found, analyses


def sweep_key(sweep: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sweep.items())


@dataclass
class Aggregate:
    """One method x dataset x shot (x sweep point) over its seeds.

    `mean` is the mean of the seeds' means; `ci95` is 1.96·std/√n of the seed-averaged
    per-episode accuracies (episodes are shared by seeds); `seed_sd` the spread of seed means.
    """

    method: str
    label: str
    dataset: str
    shot: int
    sweep: dict[str, Any]
    seeds: list[int] = field(default_factory=list)
    missing_seeds: list[int] = field(default_factory=list)
    mean: float | None = None
    ci95: float | None = None
    seed_sd: float | None = None
    per_episode: np.ndarray | None = None
    episodes_sha: str | None = None
    recovery_hours: float | None = None
    devices: list[str] = field(default_factory=list)
    per_domain: dict[str, tuple[float, float]] = field(default_factory=dict)  # multi-domain: mean, ci95
    curves: list[dict[str, Any]] = field(default_factory=list)  # per seed
    artifacts: list[Path] = field(default_factory=list)  # per seed

    @property
    def complete(self) -> bool:
        return self.mean is not None


def aggregate(found: list[Found]) -> dict[tuple[str, str, int, tuple[tuple[str, Any], ...]], Aggregate]:
    groups: dict[tuple[str, str, int, tuple[tuple[str, Any], ...]], list[Found]] = {}
    for item in found:
        key = (item.cell.method.name, item.cell.dataset, item.cell.shot, sweep_key(item.cell.sweep))
        groups.setdefault(key, []).append(item)
    return {key: _aggregate(key, items) for key, items in groups.items()}


def _aggregate(key: tuple[str, str, int, tuple[tuple[str, Any], ...]], items: list[Found]) -> Aggregate:
    method, dataset, shot, sweep = key
    done = [i for i in items if i.record is not None]
    label = display_name(method)
    if done and method_label(done[0].record).endswith("(reconstructed)"):  # type: ignore[arg-type]
        label += " (reconstructed)"
    result = Aggregate(method, label, dataset, shot, dict(sweep),
                       seeds=[i.cell.seed for i in done],
                       missing_seeds=[i.cell.seed for i in items if i.record is None])
    if not done:
        return result
    shas = {i.record["test_episodes"]["sha"] for i in done}  # type: ignore[index]
    per_seed = [i.per_episode() for i in done]
    means = [float(np.mean(a)) for a in per_seed]
    result.mean = float(np.mean(means))
    result.seed_sd = float(np.std(means, ddof=1)) if len(means) > 1 else None
    if len(shas) == 1 and len({a.shape for a in per_seed}) == 1:
        result.per_episode = np.mean(per_seed, axis=0)
        result.episodes_sha = shas.pop()
        result.ci95 = Z95 * float(result.per_episode.std(ddof=0)) / np.sqrt(result.per_episode.size)
        domains = done[0].record.get("per_domain") or {}  # type: ignore[union-attr]
        bounds = np.cumsum([0, *(int(d["n"]) for d in domains.values())])
        if domains and bounds[-1] == result.per_episode.size:
            for name, a, b in zip(domains, bounds, bounds[1:]):
                part = summarize(result.per_episode[a:b])
                result.per_domain[name] = (part.mean, part.ci95)
    seconds = [(i.record.get("timings") or {}).get("recovery_seconds") for i in done]  # type: ignore[union-attr]
    if all(s is not None for s in seconds):
        result.recovery_hours = float(np.mean(seconds)) / 3600.0
    result.devices = sorted({i.record["environment"]["device_name"] for i in done})  # type: ignore[index]
    result.curves = [i.record.get("curves") or {} for i in done]  # type: ignore[union-attr]
    result.artifacts = [i.path.with_suffix(".artifacts") for i in done]
    return result
