"""Execution: run planned cells (`planning`), skipping cells already recorded with the same
config hash; each cell is fit, meta-tested and recorded; a summary table of the outcomes."""

from __future__ import annotations

import datetime as dt
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dfmlbench.data import cell_dataset
from dfmlbench.errors import UserError, note
from dfmlbench.events import CellEvents, check_tensorboard, events_path
from dfmlbench.kernels import kernel_for
from dfmlbench.learner_store import MAIN_LEARNER, save_learners
from dfmlbench.meta_test import MetaTest
from dfmlbench.method import RunContext
from dfmlbench.data.facts import check_fit, measured_facts
from dfmlbench.paths import cache_dir, check_writable_folder
from dfmlbench.locks import claimed
from dfmlbench.planning import Cell, cell_stem, pool_identity, twinned_pools, unique_cells
from dfmlbench.pool import PoolSpec, check_pool_source, obtain_pool, planned_pool_key
from dfmlbench.pool.pretrain import derive_seed
from dfmlbench.records import CellRecord, device_name, environment, finished_record, method_label, write_record
from dfmlbench.reuse import ReuseIndex, adopt, reused_label


@dataclass
class Outcome:
    cell: Cell
    # "ran", "recorded" (skipped: already done), "reused" (copied in from a --reuse folder),
    # "running" (in another process), "failed"
    status: str
    record: dict[str, Any] | None
    path: Path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"runtime.device={name} but no CUDA device is visible; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}': use auto, cpu or cuda[:N]") from None


class CellRunner:
    """Runs one cell: data, pool, fit (timed), meta-test on the shared episodes, record."""

    def __init__(self, out_dir: Path, show_progress: bool | None = None, resume: bool = True,
                 twinned: frozenset[tuple[str, str, str]] = frozenset()) -> None:
        self.out_dir = Path(out_dir)
        self.twinned = twinned  # pools whose `select` twin the run also uses (`twinned_pools`)
        self.show_progress = show_progress
        self.resume = resume  # False (--force): checkpoints of earlier attempts are not resumed from

    def _bar(self, **kwargs: Any) -> tqdm:
        return tqdm(leave=False, disable=None if self.show_progress is None else not self.show_progress,
                    **kwargs)

    def run(self, cell: Cell, stem: Path) -> dict[str, Any]:
        """The cell's record; what it does meanwhile streams to its events file and log."""
        with CellEvents(stem, cell.label, bool(cell.config["runtime"]["tensorboard"])) as events:
            try:
                record = self._run(cell, stem, events)
            except BaseException as exc:  # a crash, or the job killed: say so, then let it through
                events.stage("stopped", error=f"{type(exc).__name__}: {exc}"[:300])
                raise
            events.stage("recorded", accuracy=round(record["accuracy"]["mean"], 2),
                         wall_seconds=round(record["timings"]["wall_seconds"], 1))
            return record

    def _run(self, cell: Cell, stem: Path, events: CellEvents) -> dict[str, Any]:
        config, protocol, runtime = cell.config, cell.config["protocol"], cell.config["runtime"]
        device = resolve_device(runtime["device"])
        events.stage("start", device=str(device), config_hash=cell.hash)
        started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        wall = time.perf_counter()
        dataset = cell_dataset(cell.config)

        pool, pool_info, pool_seconds = None, None, 0.0
        if cell.method.uses_teachers:
            spec = PoolSpec.from_config(config["pool"])
            events.stage("pool", teachers=spec.num_teachers)
            with self._bar(total=spec.num_teachers, desc="teacher pool") as bar:
                t0 = time.perf_counter()
                pool = obtain_pool(dataset, spec, device, lambda done, total: bar.update(1),
                                   fill_twin=pool_identity(cell, spec) in self.twinned)
                pool_seconds = time.perf_counter() - t0
            pool_info = {"key": pool.key, "path": str(pool.path), "num_teachers": len(pool),
                         "architectures": pool.architectures,
                         "mean_heldout_acc": sum(t.heldout_acc for t in pool) / len(pool),
                         # what the teachers were trained on, when it differs from this run
                         "training_note": pool.metadata.get("training_note"),
                         "regime": pool.metadata.get("regime")}  # how far the teachers trained

        meta_test = MetaTest(dataset, protocol, cell.shot, device, int(runtime["eval_chunk"]))
        ctx = RunContext(device, cell.seed, cell.method.settings, config["learner"]["arch"],
                         dataset.image_size, dataset.channels, protocol["way"], cell.shot,
                         stem.with_suffix(".artifacts"), meta_test.validate, lambda **kw: self._bar(**kw),
                         resume=self.resume, checkpoint_minutes=runtime["checkpoint_minutes"], on_log=events.point,
                         tester=meta_test.test_mean if protocol.get("max_over_test") else None)
        torch.manual_seed(derive_seed(cell.seed, "global"))
        events.stage("fit", method=cell.method.name)
        t0 = time.perf_counter()
        learner = cell.method.fit(pool, ctx)
        fit_seconds = time.perf_counter() - t0
        saved = save_learners(stem, {MAIN_LEARNER: learner, **ctx.extra_learners})

        tested = meta_test.run(learner, ctx.extra_learners, self._bar, events.stage, ctx.curves)
        recovery, validation = ctx.recovery_clock.seconds, ctx.validation_clock.seconds
        record: CellRecord = {
            **cell.identity(), **tested.fields,
            "timings": {
                # A method recovers data exactly when it timed some under ctx.recovery().
                "recovery_seconds": recovery if ctx.recovery_clock.intervals else None,
                "meta_train_seconds": fit_seconds - recovery - validation,
                "validation_seconds": validation, "eval_seconds": tested.seconds,
                "pool_seconds": pool_seconds,
                "wall_seconds": time.perf_counter() - wall,
            },
            "sweep": cell.sweep, "overrides": cell.overrides, "events_file": events_path(stem).name,
            "learner": learner.description, "learner_file": saved.file, "learner_not_saved": saved.reason,
            "method_info": ctx.info, "curves": ctx.curves,
            "pool": pool_info, "dataset_fingerprint": dataset.fingerprint(),
            "config": config, "environment": environment(device),
            "started_at": started_at,
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_record(stem, record, tested.accuracies)
        return record


@dataclass(frozen=True)
class Expected:
    """What a cell's record must have been made on to count as done: its data and its pool."""

    dataset_fingerprint: str
    pool_key: str | None  # None: the method uses no teachers

    @classmethod
    def made_on(cls, record: dict[str, Any]) -> Expected:
        return cls(record.get("dataset_fingerprint"), (record.get("pool") or {}).get("key"))


def preflight(cells: list[Cell], out_dir: Path) -> dict[Path, Expected]:
    """Everything that can be checked before any cell runs, in seconds: the records folder and
    the cache are writable folders, the devices exist, every dataset loads and holds the
    classes and images its episodes and teachers need, brought-in or cached pools are sound.
    Returns what each cell's record must have been made on."""
    check_writable_folder(out_dir, "--out")
    check_writable_folder(cache_dir(), "the cache folder (DFMLBENCH_CACHE)")
    for device in dict.fromkeys(c.config["runtime"]["device"] for c in cells):
        kernel_for(resolve_device(device))  # a forced task kernel must be one
    check_tensorboard(any(c.config["runtime"]["tensorboard"] for c in cells))
    expected: dict[Path, Expected] = {}
    pool_keys: dict[tuple[tuple[str, str], str], str] = {}  # (data, spec) -> planned key, each pool checked once
    for cell in cells:
        dataset = cell_dataset(cell.config)
        protocol, key = cell.config["protocol"], None
        spec = PoolSpec.from_config(cell.config["pool"]) if cell.method.uses_teachers else None
        check_fit(measured_facts(dataset), protocol["way"], cell.shot, protocol["query"],
                  spec.way if spec and not spec.path else None)
        if spec is not None:
            data = (cell.dataset, repr(cell.config.get("dataset_settings")))
            if (data, repr(spec)) not in pool_keys:
                check_pool_source(dataset, spec)
                pool_keys[data, repr(spec)] = planned_pool_key(dataset, spec)
            key = pool_keys[data, repr(spec)]
        expected[cell_stem(out_dir, cell)] = Expected(dataset.fingerprint(), key)
    return expected


def _done(stem: Path, cell: Cell, expected: Expected) -> dict[str, Any] | None:
    """The cell's finished record, if it was made on the same data and pool; a damaged one is
    noted and run again; one made on other data stops the run (it would be mixed in)."""
    record, problem = finished_record(stem, cell.hash)
    if record is None:
        if problem is not None:
            note(f"{stem.with_suffix('.json')}: {problem}; the cell runs again")
        return None
    made_on = Expected.made_on(record)
    if made_on != expected:
        what = "data" if made_on.dataset_fingerprint != expected.dataset_fingerprint else "teacher pool"
        raise UserError(f"{stem.with_suffix('.json')} was made on other {what} than this run's "
                        f"({made_on} vs {expected}); use another --out, or --force to replace it")
    return record


def _note_mixed_environments(records: list[dict[str, Any]], device: torch.device, out_dir: Path) -> None:
    """Results differ in the last digits between devices and thread counts: say so when a
    resumed run would put records of another one beside this run's."""
    here = device_name(device)
    others = sorted({(r.get("environment") or {}).get("device_name", "unknown") for r in records} - {here})
    if others:
        note(f"{len(records)} recorded cell(s) under {out_dir} include some made on {', '.join(others)}; "
             f"this run uses {here}; results can differ in the last digits between them "
             "(use --force to rerun, or another --out)")


def adopt_reusable(cells: list[Cell], out_dir: Path, reuse: ReuseIndex,
                   expected: dict[Path, Expected] | None = None) -> set[Path]:
    """Copy in (`reuse.adopt`) every cell without a record here that a record under the --reuse
    folders computed on the same data and pool; the stems adopted."""
    cells = unique_cells(cells, out_dir)
    expected = expected if expected is not None else preflight(cells, out_dir)
    adopted = set()
    for cell in cells:
        stem = cell_stem(out_dir, cell)
        if _done(stem, cell, expected[stem]) is not None:
            continue
        source = reuse.find(cell, lambda record: Expected.made_on(record) == expected[stem])
        if source is None:
            continue
        with claimed(stem, out_dir) as mine:
            if mine and _done(stem, cell, expected[stem]) is None:
                adopt(source, cell, stem)
                adopted.add(stem)
    return adopted


def run_cells(cells: list[Cell], out_dir: Path, force: bool = False,
              show_progress: bool | None = None, reuse: ReuseIndex | None = None) -> list[Outcome]:
    """Each cell's outcome: run, or skipped as recorded here (or copied in from `reuse`)."""
    cells = unique_cells(cells, out_dir)
    runner = CellRunner(out_dir, show_progress, resume=not force, twinned=twinned_pools(cells))
    stems = [cell_stem(out_dir, cell) for cell in cells]
    expected = preflight(cells, out_dir)
    adopted = adopt_reusable(cells, out_dir, reuse, expected) if reuse is not None else set()
    recorded = [None if force else _done(stem, cell, expected[stem]) for cell, stem in zip(cells, stems)]
    if cells:
        _note_mixed_environments([r for r in recorded if r], resolve_device(cells[0].config["runtime"]["device"]),
                                 out_dir)
    outcomes = []
    bar = tqdm(cells, desc="cells", disable=None if show_progress is None else not show_progress)
    for cell, stem, record in zip(bar, stems, recorded):
        bar.set_postfix_str(cell.label)
        if record is not None:
            outcomes.append(Outcome(cell, "reused" if stem in adopted else "recorded", record,
                                    stem.with_suffix(".json")))
            continue
        with claimed(stem, out_dir) as mine:  # jobs sharing the folder never run one cell twice
            if not mine:
                tqdm.write(f"skipped: {cell.label} is running in another process")
                outcomes.append(Outcome(cell, "running", None, stem.with_suffix(".json")))
                continue
            record = None if force else _done(stem, cell, expected[stem])  # finished there meanwhile
            outcomes.append(Outcome(cell, "recorded", record, stem.with_suffix(".json")) if record is not None
                            else _run_one(runner, cell, stem))
    return outcomes


def _run_one(runner: CellRunner, cell: Cell, stem: Path) -> Outcome:
    try:
        return Outcome(cell, "ran", runner.run(cell, stem), stem.with_suffix(".json"))
    except UserError:
        raise
    except Exception as exc:  # a crashed cell is recorded (beside any finished record) and the others run
        failed = {"status": "failed", "config_hash": cell.hash, "method": cell.method.name,
                  "dataset": cell.dataset, "shot": cell.shot, "seed": cell.seed,
                  "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
                  "config": cell.config, "environment": environment(resolve_device(cell.config["runtime"]["device"]))}
        path = write_record(stem, failed, None)
        tqdm.write(f"cell failed: {cell.label}: {type(exc).__name__}: {exc}")
        return Outcome(cell, "failed", failed, path)


def recovery_seconds(record: dict[str, Any] | None) -> float | None:
    return ((record or {}).get("timings") or {}).get("recovery_seconds")


# docs/profiles.md, rule 3: the paper suites' cpu profiles run every method at about this share
# of its paper budget, FREE's 40 of 980 epochs (budget_fraction 0.041 rounds FREE to exactly
# that); below it a table measures the cut, not the method.
WORKING_BUDGET_SHARE = 40 / 980


def budget_notice(cells: list[Cell]) -> str | None:
    """One line for a run whose training methods ran below the working budget (the quickstart),
    said next to its table so the table does not speak for the methods."""
    short = {}
    for cell in cells:
        share = cell.method.paper_share()
        if share is not None and share < WORKING_BUDGET_SHARE:
            short.setdefault(cell.method.name, share)
    if not short:
        return None
    ran = ", ".join(f"{label} {share:.1%}" for label, share in short.items())
    return (f"note: these cells ran a small share of their paper budgets ({ran}); the paper suites' cpu "
            f"profiles run {WORKING_BUDGET_SHARE:.1%} (docs/profiles.md), and below that an accuracy measures "
            "the cut, not the method. For working budgets: python -m dfmlbench run --suite table2 "
            "--profile cpu (about 3.5 h on 2 cores).")


def summary_table(outcomes: list[Outcome], reference: str = "free") -> str:
    """A Markdown table of the cells: accuracy ± CI, the timings that matter, and each
    recovery time as a multiple of `reference`'s in the same dataset/shot/seed, when it ran."""
    reference_seconds = {(o.cell.dataset, o.cell.shot, o.cell.seed): recovery_seconds(o.record)
                         for o in outcomes if o.cell.method.name == reference}
    rows = [f"| method | dataset | shot | seed | accuracy (%) | recovery (s) | recovery / {reference} | fit (s) | status |",
            "|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        r = o.record or {}
        acc = r.get("accuracy")
        accuracy = f"{acc['mean']:.2f} ± {acc['ci95']:.2f}" if acc else "-"
        t = r.get("timings") or {}
        seconds = recovery_seconds(r)
        recovery = f"{seconds:.1f}" if seconds is not None else "-"
        base = reference_seconds.get((o.cell.dataset, o.cell.shot, o.cell.seed))
        ratio = f"{seconds / base:.1f}x" if seconds is not None and base else "-"
        fit = t.get("meta_train_seconds")
        fit_s = f"{fit + (t.get('recovery_seconds') or 0):.1f}" if fit is not None else "-"
        label = method_label({"method": o.cell.method.name, **r})
        label += "".join(f" ({key}={value})" for key, value in o.cell.sweep.items())
        origin = reused_label(r)
        status = f"{o.status} (from {origin})" if origin else o.status
        rows.append(f"| {label} | {o.cell.dataset} | {o.cell.shot} | {o.cell.seed} | "
                    f"{accuracy} | {recovery} | {ratio} | {fit_s} | {status} |")
    return "\n".join(rows)
