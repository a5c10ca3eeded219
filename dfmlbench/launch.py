"""`run --launcher local|slurm`: each pending cell as its own job on an existing engine,
submitit (a process per job on this machine, or a Slurm job array). Pools are a stage of their
own: one job per pool that is not yet built, and the cells that need it start after it.

A job re-plans its suite from the same arguments and runs the one cell of its config hash, so
what it records is exactly what a plain `run` records; records, locks and checkpoints make a
resubmission (`run --launcher ...` again) run only what is not done, and a preempted or
timed-out job requeue itself to resume from its checkpoints."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dfmlbench.errors import UserError

JOBS_FOLDER = "jobs"  # under --out: submitit's pickles and each job's stdout/stderr, by job id
LAUNCHES = "launches.jsonl"  # under JOBS_FOLDER: one line per submitted job


@dataclass(frozen=True)
class Selection:
    """What selects a suite's cells: the arguments of `run`, as strings (picklable, and the
    job resolves them itself)."""

    suite: str
    profile: str
    assignments: tuple[str, ...]
    device: str | None
    data_root: str | None

    def config(self) -> dict[str, Any]:
        from dfmlbench.config import command_assignments, load_suite, resolve

        assignments = command_assignments(self.assignments, self.device, self.data_root)
        return resolve(load_suite(self.suite), self.profile, assignments)

    def cells(self, methods: list[str] | None = None) -> list[Any]:
        from dfmlbench.planning import expand_cells
        return expand_cells(self.config(), methods)


@dataclass(frozen=True)
class CellJob:
    """One cell, run in its own process: found again by its config hash."""

    selection: Selection
    method: str
    config_hash: str
    out: str
    force: bool = False

    def __call__(self) -> str:
        from dfmlbench.runner import run_cells

        cells = [c for c in self.selection.cells([self.method]) if c.hash == self.config_hash]
        if not cells:
            raise UserError(f"no cell of {self.method} has config hash {self.config_hash} any more: the suite "
                            "or the code changed since it was submitted; run `run --launcher ...` again")
        outcome = run_cells(cells[:1], Path(self.out), self.force, show_progress=False)[0]
        if outcome.status == "failed":
            raise RuntimeError(f"{outcome.cell.label} failed: {outcome.record['error']} (see {outcome.path})")
        return f"{outcome.status}: {outcome.cell.label} -> {outcome.path}"

    def checkpoint(self) -> Any:
        """submitit calls this on preemption or timeout: requeue the same job, which resumes
        from the cell's checkpoints."""
        import submitit
        return submitit.helpers.DelayedSubmission(self)


@dataclass(frozen=True)
class AnalysisJob:
    """One analysis cell (e.g. Fig. 4's teacher features), found again by its config hash."""

    selection: Selection
    config_hash: str
    out: str
    force: bool = False

    def __call__(self) -> str:
        from dfmlbench.analysis.cells import expand_analysis_cells, run_analysis_cell

        cells = [c for c in expand_analysis_cells(self.selection.config()) if c.hash == self.config_hash]
        if not cells:
            raise UserError(f"no analysis cell has config hash {self.config_hash} any more; run the launcher again")
        status, _ = run_analysis_cell(cells[0], Path(self.out), self.force)
        return f"{status}: {cells[0].label}"


@dataclass(frozen=True)
class PoolJob:
    """Build (or complete) one cached teacher pool, under its lock."""

    dataset: str
    pool: tuple[tuple[str, Any], ...]  # the cell's pool settings
    data_root: str | None
    download: bool
    device: str
    options: tuple[tuple[str, Any], ...] = ()  # the dataset's settings
    fill_twin: bool = False  # also fill the pool that differs only in `select` (`build_pool`)

    def __call__(self) -> str:
        from dfmlbench.data import load_dataset
        from dfmlbench.pool import PoolSpec, obtain_pool
        from dfmlbench.runner import resolve_device

        dataset = load_dataset(self.dataset, self.data_root, self.download, dict(self.options))
        pool = obtain_pool(dataset, PoolSpec.from_config(dict(self.pool)), resolve_device(self.device),
                           fill_twin=self.fill_twin)
        twin = " (and its select twin)" if self.fill_twin else ""
        return f"pool {pool.key}{twin}: {len(pool)} teachers at {pool.path}"

    def checkpoint(self) -> Any:
        import submitit
        return submitit.helpers.DelayedSubmission(self)  # a build resumes at its next teacher


def executor(kind: str, folder: Path, launcher: dict[str, Any], name: str) -> Any:
    """A submitit executor sized by the `launcher` settings."""
    import submitit

    common = {"timeout_min": launcher["timeout_min"], "gpus_per_node": launcher["gpus_per_job"],
              "cpus_per_task": launcher["cpus_per_job"], "tasks_per_node": 1, "nodes": 1}
    if kind == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(**common)
        return ex
    try:
        ex = submitit.SlurmExecutor(folder=folder)
    except RuntimeError:
        raise UserError("--launcher slurm needs Slurm's srun and sbatch on PATH (run it on the cluster's login "
                        "node), or use --launcher local on this machine") from None
    extra = {key: value for key, value in (("partition", launcher["partition"]), ("account", launcher["account"]))
             if value}
    ex.update_parameters(job_name=name, time=launcher["timeout_min"], gpus_per_node=launcher["gpus_per_job"],
                         cpus_per_task=launcher["cpus_per_job"], mem=f"{launcher['mem_gb']:g}GB", ntasks_per_node=1,
                         nodes=1, array_parallelism=launcher["array_parallelism"], signal_delay_s=120,
                         additional_parameters=dict(launcher["slurm"]), **extra)
    return ex


def _log(folder: Path, job: Any, kind: str, what: str) -> None:
    line = {"job_id": str(job.job_id), "kind": kind, "what": what,
            "submitted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    with open(folder / LAUNCHES, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def launch(args: argparse.Namespace, config: dict[str, Any], cells: list[Any], analyses: list[Any]) -> int:
    """Submit the pending cells (and the pools they need, and the suite's analyses); locally,
    wait for them."""
    from dfmlbench.analysis.cells import analysis_stem
    from dfmlbench.records import finished_record
    from dfmlbench.runner import preflight
    from dfmlbench.status import plan

    out = Path(args.out)
    everything = plan(cells, out)
    planned = [p for p in everything if args.force or p.status in ("pending", "failed")]
    analyses = [a for a in analyses if args.force or finished_record(analysis_stem(out, a), a.hash, "arrays_file")[0]
                is None]
    skipped = len(everything) - len(planned)
    if not planned and not analyses:
        print(f"nothing to submit: every cell is done or running ({skipped}); `plan` shows them")
        return 0
    if planned:
        preflight([p.cell for p in planned], out)  # bad input: one line now, not in a job's log
    folder = out / JOBS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    # absolute paths: a job may start in another folder than this one
    suite_ref = str(Path(args.suite).resolve()) if Path(args.suite).is_file() else args.suite
    data_root = str(Path(args.data_root).resolve()) if args.data_root else None
    selection = Selection(suite_ref, config["profile"], tuple(args.assignments), args.device, data_root)
    out = out.resolve()
    runtime, launcher = config["runtime"], config["launcher"]
    groups: dict[Any, list[Any]] = {}  # pool need (None: no teachers, or a brought-in pool) -> its cells
    for p in planned:
        groups.setdefault(p.pool if p.pool and not p.pool.spec.path else None, []).append(p)
    local = args.launcher == "local"
    results: list[tuple[str, bool]] = []  # (what, failed) of the local jobs
    print(f"submitting {len(planned) + len(analyses)} cell(s) through submitit ({args.launcher}); {skipped} done "
          f"or running; job logs under {folder}")
    name = f"dfmlbench-{config['suite']['name']}"
    if analyses:
        results += _submit(executor(args.launcher, folder / "%j", launcher, name), "analysis", folder, local,
                           [(a.label, AnalysisJob(selection, a.hash, str(out), args.force)) for a in analyses])[1]
    pool_jobs: dict[Any, Any] = {}  # pool need -> the job that builds it (and fills its twin)
    for need, members in groups.items():
        ex = executor(args.launcher, folder / "%j", launcher, name)
        twin = need.select_twin() if need is not None else None
        pool_job = pool_jobs.get(twin)  # a twin's build fills this pool too: no second training run
        if pool_job is None and need is not None and need.state(runtime["data_root"]) != "built":
            pool = PoolJob(need.dataset, tuple(sorted(asdict(need.spec).items())), data_root or runtime["data_root"],
                           bool(runtime.get("download")), runtime["device"], need.options, fill_twin=twin in groups)
            # locally (no dependencies) the pool is built first; on Slurm its cells start when the
            # pool job ends (afterany: a cell completes a failed build itself, under the lock)
            what = f"pool {need.label}" + (f" (also fills the {twin.spec.select} epoch's pool)" if pool.fill_twin else "")
            (pool_job,), _ = _submit(ex, "pool", folder, local, [(what, pool)])
            pool_jobs[need] = pool_job
        if pool_job is not None and not local:
            ex.update_parameters(additional_parameters={**dict(launcher["slurm"]),
                                                        "dependency": f"afterany:{pool_job.job_id}"})
        jobs = [(p.cell.label, CellJob(selection, p.cell.method.name, p.cell.hash, str(out), args.force))
                for p in members]
        wave = launcher["array_parallelism"] if local else len(jobs)  # locally, that many processes at once
        for start in range(0, len(jobs), wave):
            results += _submit(ex, "cell", folder, local, jobs[start:start + wave])[1]
    if not local:
        print(f"`python -m dfmlbench plan --suite {args.suite} --out {out}` shows progress; "
              "the same command again resubmits what is not done")
        return 0
    return 1 if any(error for _, error in results) else 0


def _submit(ex: Any, kind: str, folder: Path, local: bool,
            jobs: list[tuple[str, Any]]) -> tuple[list[Any], list[tuple[str, bool]]]:
    """Submit (what, job) pairs as one batch (a Slurm job array), log them; locally, wait for
    them. The submitted jobs, and locally each one's (what, failed)."""
    with ex.batch():
        submitted = [ex.submit(job) for _, job in jobs]
    labelled = [(what, job) for (what, _), job in zip(jobs, submitted)]
    for what, job in labelled:
        _log(folder, job, kind, what)
        print(f"  {job.job_id}  {what}")
    return submitted, _wait(labelled) if local else []


def _wait(jobs: list[tuple[str, Any]]) -> list[tuple[str, bool]]:
    """Wait for local jobs, one line each; (what, failed)."""
    done = []
    for what, job in jobs:
        try:
            print(f"  {job.job_id}  {job.result()}")
            done.append((what, False))
        except Exception as exc:  # submitit re-raises the job's error; its log says more
            message = str(exc).strip().splitlines()
            print(f"  {job.job_id}  failed: {what}: {message[-1] if message else type(exc).__name__} "
                  f"(log: {job.paths.stderr})")
            done.append((what, True))
    return done
