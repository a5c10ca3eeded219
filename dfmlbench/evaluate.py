"""`python -m dfmlbench evaluate`: fit once, evaluate many. The learners a run saved beside its
records are re-tested under another meta-test protocol (`--set protocol.*`: an lr grid, other
steps, more episodes; `--fit-shot K`: learners fitted at K shots tested at the suite's shots)
without refitting.

An evaluation is a cell of its own: the cell `run` would plan under the new protocol, plus the
config hash of the fit whose learner it tests (`config.fit`), which together give its hash. Its
record has every field of a run's, the fit's timings and curves included, and
`evaluation_of` naming the fit; `report` with the same `--set` (and `--fit-shot`) reads it
wherever no record fitted under that protocol exists."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from dfmlbench.config import Suite, config_hash, resolve
from dfmlbench.data import cell_dataset
from dfmlbench.errors import UserError
from dfmlbench.events import CellEvents, events_path
from dfmlbench.learner_store import MAIN_LEARNER, load_learners
from dfmlbench.locks import claimed
from dfmlbench.meta_test import MetaTest
from dfmlbench.planning import Cell, cell_stem, expand_cells, unique_cells
from dfmlbench.records import CellRecord, environment, finished_record, write_record

EVALUATION_PREFIX = "protocol."  # the overrides an evaluation may change; every other one selects the fit


@dataclass(frozen=True)
class Evaluation:
    cell: Cell  # planned under the new protocol; its hash includes the fit's
    fit: Cell  # the cell whose saved learner it tests
    planned_hash: str  # the hash `run` gives this cell (a learner fitted under the new protocol)


def plan_evaluations(suite: Suite, profile: str, assignments: list[tuple[str, Any]],
                     methods: list[str] | None = None, fit_shot: int | None = None) -> list[Evaluation]:
    """Each cell of the suite under all `assignments`, paired with the fit that the suite plans
    without its `protocol.*` ones (at `fit_shot` shots when given, else at the cell's)."""
    tested = expand_cells(resolve(suite, profile, assignments), methods)
    fit_assignments = [(k, v) for k, v in assignments if not k.startswith(EVALUATION_PREFIX)]
    if fit_shot is not None:
        fit_assignments.append(("shots", [fit_shot]))
    fits = {_key(c, c.shot): c for c in expand_cells(resolve(suite, profile, fit_assignments), methods)}
    evaluations = []
    for cell in tested:
        fit = fits.get(_key(cell, fit_shot if fit_shot is not None else cell.shot))
        if fit is None:  # the fit plan lacks the cell's shot: a --set shots without --fit-shot
            raise UserError(f"no fit of {cell.label} is planned at {cell.shot} shots; pass --fit-shot K to test "
                            "learners fitted at K shots")
        config = {**cell.config, "fit": fit.hash}
        evaluations.append(Evaluation(replace(cell, config=config, hash=config_hash(config)), fit, cell.hash))
    return evaluations


def _key(cell: Cell, shot: int) -> tuple[Any, ...]:
    return cell.method.name, cell.dataset, shot, cell.seed, tuple(sorted(cell.sweep.items()))


@dataclass
class Evaluated:
    evaluation: Evaluation
    status: str  # "ran", "recorded", "running", "no fit", "not saved"
    detail: str
    record: dict[str, Any] | None = None


def run_evaluations(evaluations: list[Evaluation], runs: Path, out: Path, force: bool,
                    bar: Callable[..., Any]) -> list[Evaluated]:
    by_stem = {cell_stem(out, e.cell): e for e in evaluations}
    outcomes = []
    for cell in unique_cells([e.cell for e in evaluations], out):
        stem = cell_stem(out, cell)
        evaluation = by_stem[stem]
        record = None if force else finished_record(stem, cell.hash)[0]
        if record is not None:
            outcomes.append(Evaluated(evaluation, "recorded", str(stem.with_suffix(".json")), record))
            continue
        fit_stem = cell_stem(runs, evaluation.fit)
        fit_record, problem = finished_record(fit_stem, evaluation.fit.hash)
        if fit_record is None:
            outcomes.append(Evaluated(evaluation, "no fit", f"no finished record {fit_stem.with_suffix('.json')}"
                                      + (f" ({problem})" if problem else "") + "; run the suite first"))
        elif not fit_record.get("learner_file"):
            reason = fit_record.get("learner_not_saved") or "made before runs saved their learners"
            outcomes.append(Evaluated(evaluation, "not saved", f"{reason}; use run with these --set instead"))
        else:
            with claimed(stem, out) as mine:
                if not mine:
                    outcomes.append(Evaluated(evaluation, "running", "in another process"))
                    continue
                record = evaluate_one(evaluation, fit_stem, fit_record, stem, bar)
                outcomes.append(Evaluated(evaluation, "ran", str(stem.with_suffix(".json")), record))
    return outcomes


def evaluate_one(evaluation: Evaluation, fit_stem: Path, fit: dict[str, Any], stem: Path,
                 bar: Callable[..., Any]) -> dict[str, Any]:
    """The fit's saved learners on the evaluation's episodes, recorded at `stem`."""
    from dfmlbench.runner import resolve_device

    cell = evaluation.cell
    config, protocol, runtime = cell.config, cell.config["protocol"], cell.config["runtime"]
    wall, started_at = time.perf_counter(), dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    device = resolve_device(runtime["device"])
    dataset = cell_dataset(cell.config)
    if fit.get("dataset_fingerprint") != dataset.fingerprint():
        raise UserError(f"{fit_stem.with_suffix('.json')} was fitted on other {cell.dataset} data than this "
                        "machine's; evaluate it where it was fitted, or run the suite here")
    learners = load_learners(fit_stem, protocol["way"], dataset.image_size, dataset.channels, device)
    learner = learners.pop(MAIN_LEARNER)
    with CellEvents(stem, f"{cell.label} (evaluation)", bool(runtime["tensorboard"])) as events:
        events.stage("start", device=str(device), config_hash=cell.hash, fit=evaluation.fit.hash)
        tested = MetaTest(dataset, protocol, cell.shot, device, int(runtime["eval_chunk"])).run(
            learner, learners, bar, events.stage)
        record: CellRecord = {
            **cell.identity(), **tested.fields,
            "timings": {**fit["timings"], "eval_seconds": tested.seconds,
                        "fit_wall_seconds": fit["timings"].get("wall_seconds"),
                        "wall_seconds": time.perf_counter() - wall},
            "evaluation_of": {"config_hash": evaluation.fit.hash, "record": str(fit_stem.with_suffix(".json")),
                              "shot": evaluation.fit.shot},
            "sweep": cell.sweep, "overrides": cell.overrides, "events_file": events_path(stem).name,
            **{key: fit.get(key) for key in ("learner", "method_info", "curves", "pool", "dataset_fingerprint")},
            "config": config, "environment": environment(device),
            "started_at": started_at,
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_record(stem, record, tested.accuracies)
        events.stage("recorded", accuracy=round(record["accuracy"]["mean"], 2))
    return record
