"""`python -m dfmlbench run|plan|pool|evaluate|report|results|list|compare|data`. Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import argparse
import ctypes
import shlex
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from dfmlbench.errors import UserError, note

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see: python -m {self.prog} --help)")


def _add_cell_arguments(parser: argparse.ArgumentParser) -> None:
    """What selects a suite's cells and where their records go (run and plan alike)."""
    parser.add_argument("--suite", required=True, help="a built-in suite name or a suite .yaml path")
    parser.add_argument("--method", action="extend", nargs="+", metavar="NAME",
                        help="only these methods (--method a b, or --method a --method b); "
                             "default: the suite's methods")
    parser.add_argument("--profile", help="paper, cpu or smoke (default: the suite's default_profile)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set protocol.test_episodes=100 (repeatable)")
    parser.add_argument("--out", default="runs", help="records folder (default: ./runs)")
    parser.add_argument("--device", help="auto, cpu or cuda[:N] (default: auto)")
    parser.add_argument("--data-root", help="folder holding dataset files (else $DFMLBENCH_DATA, ../shared/data)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dfmlbench", description="Benchmark harness for data-free meta-learning.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a suite's cells (method x dataset x shot x seed)")
    _add_cell_arguments(run)
    run.add_argument("--force", action="store_true", help="rerun cells that already have a record")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--shard", metavar="I/N", help="run only shard I of N of the cells (for another scheduler)")
    run.add_argument("--reuse", action="append", default=[], metavar="FOLDER",
                     help="copy in cells that records under FOLDER (another run's --out, a report's records/) "
                          "already computed under another suite or profile name, instead of running them")
    run.add_argument("--launcher", choices=["local", "slurm"],
                     help="submit each pending cell as its own job through submitit (settings: launcher.*)")

    plan = sub.add_parser("plan", help="a suite's cells, their status in --out, the pools they need and "
                                       "their estimated cost; runs nothing")
    _add_cell_arguments(plan)
    plan.add_argument("--reuse", action="append", default=[], metavar="FOLDER",
                      help="as run --reuse: show which cells it would copy in (status reusable)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")

    pool = sub.add_parser("pool", help="the teacher pools a suite uses: their regime (how far the teachers "
                                       "trained from their inits, how alike they are)")
    pool_sub = pool.add_subparsers(dest="pool_command", metavar="{show}", required=True, parser_class=_Parser)
    show = pool_sub.add_parser("show", help="per pool: weight norm over init norm per layer, pairwise cosine "
                                            "between teachers, optimiser steps; builds nothing")
    _add_cell_arguments(show)

    evaluate = sub.add_parser("evaluate", help="re-test the learners a run saved under another meta-test "
                                               "protocol (--set protocol.*), without refitting")
    _add_cell_arguments(evaluate)
    evaluate.add_argument("--runs", default="runs", help="where the fitted cells' records are (default: ./runs)")
    evaluate.add_argument("--fit-shot", type=int, metavar="K", help="test learners fitted at K shots (at the "
                                                                     "suite's shots, or --set shots=[...])")
    evaluate.add_argument("--force", action="store_true", help="evaluate again what has a record")
    evaluate.add_argument("--no-progress", action="store_true", help="hide progress bars")

    report = sub.add_parser("report", help="a suite's table (Markdown, LaTeX, CSV) and figures from its records")
    report.add_argument("--suite", required=True, help="a built-in suite name or a suite .yaml path")
    report.add_argument("--profile", help="the profile whose records to use (default: the suite's default_profile)")
    report.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="the same overrides the records were run with")
    report.add_argument("--runs", default="runs", help="records folder, as given to run --out (default: ./runs)")
    report.add_argument("--out", help="report folder (default: reports/SUITE-PROFILE)")
    report.add_argument("--fit-shot", type=int, metavar="K", help="as given to evaluate: read evaluations of "
                                                                   "learners fitted at K shots")

    results = sub.add_parser("results", help="every record under a runs folder as one table (pandas), "
                                             "with sweep values and --set overrides as columns")
    results.add_argument("--runs", default="runs", help="records folder, as given to run --out (default: ./runs)")
    results.add_argument("--suite", help="only this suite's records")
    results.add_argument("--csv", type=Path, metavar="FILE", help="write every column to this CSV file")

    lister = sub.add_parser("list", help="list methods, suites, datasets or analyses")
    lister.add_argument("what", nargs="?", default="methods",
                        choices=["methods", "suites", "datasets", "analyses"])

    compare = sub.add_parser("compare", help="paired test of two records on the same episodes")
    compare.add_argument("records", nargs=2, type=Path, metavar="RECORD.json")

    data = sub.add_parser("data", help="check the datasets on disk (verify), or fetch one (download)")
    data_sub = data.add_subparsers(dest="data_command", metavar="{verify,download}", required=True,
                                   parser_class=_Parser)
    verify = data_sub.add_parser("verify", help="check split classes, image counts and disjointness; "
                                                "say what to fix (exit 1 on a problem)")
    verify.add_argument("datasets", nargs="*", metavar="DATASET",
                        help="datasets to check (default: cifar-fs miniimagenet cub)")
    verify.add_argument("--data-root", help="folder holding dataset files (else $DFMLBENCH_DATA, ../shared/data)")
    verify.add_argument("--strict", action="store_true",
                        help="fail also when image counts differ from the published dataset")
    download = data_sub.add_parser("download", help="fetch a dataset's source files (cifar-fs: "
                                                    "CIFAR-100 through torchvision) and build its cache")
    download.add_argument("dataset", metavar="DATASET")
    download.add_argument("--data-root", help="where to put the files (else $DFMLBENCH_DATA, else "
                                              "the cache folder)")
    return parser


def _resolved_cells(args: argparse.Namespace) -> tuple[Any, dict[str, Any], list[Any]]:
    """The suite, its resolved config and its method cells, from run's or plan's arguments."""
    from dfmlbench.config import command_assignments, load_suite, resolve
    from dfmlbench.planning import expand_cells

    assignments = command_assignments(args.assignments, args.device, args.data_root)
    suite = load_suite(args.suite)
    config = resolve(suite, args.profile, assignments)
    return suite, config, expand_cells(config, args.method)


def _cmd_plan(args: argparse.Namespace) -> int:
    import json

    from dfmlbench.reuse import ReuseIndex
    from dfmlbench.status import plan, plan_json, plan_table

    suite, config, cells = _resolved_cells(args)
    planned = plan(cells, Path(args.out), ReuseIndex(args.reuse) if args.reuse else None)
    data_root = config["runtime"]["data_root"]
    if args.json:
        print(json.dumps(plan_json(planned, data_root), indent=1))
    else:
        print(f"suite {suite.name} (profile {config['profile']}), records under {args.out}:")
        print(plan_table(planned, data_root))
    return 0


def _cmd_pool(args: argparse.Namespace) -> int:
    from dfmlbench.pool.show import pool_lines
    from dfmlbench.status import PoolNeed

    suite, config, cells = _resolved_cells(args)
    needs = [need for need in dict.fromkeys(PoolNeed.of(c) for c in cells) if need is not None]
    if not needs:
        print(f"suite {suite.name} (profile {config['profile']}): no method of these cells uses teachers")
    for need in needs:
        print(f"pool {need.label}")
        print("\n".join(pool_lines(need.dataset, need.spec, config["runtime"]["data_root"], dict(need.options))),
              end="\n\n")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dfmlbench.config import command_assignments, load_suite
    from dfmlbench.evaluate import plan_evaluations, run_evaluations
    from dfmlbench.paths import check_writable_folder

    assignments = command_assignments(args.assignments, args.device, args.data_root)
    suite = load_suite(args.suite)
    evaluations = plan_evaluations(suite, args.profile, assignments, args.method, args.fit_shot)
    runs, out = Path(args.runs), Path(args.out if args.out != "runs" else args.runs)
    if not runs.is_dir():
        raise UserError(f"--runs {runs} is not a folder; pass the folder the suite was run into (run --out)")
    check_writable_folder(out, "--out")
    print(f"suite {suite.name}: {len(evaluations)} evaluation(s) of the learners under {runs} -> {out}")
    bar = _progress_factory(args.no_progress)
    outcomes = run_evaluations(evaluations, runs, out, args.force, bar)
    for o in outcomes:
        accuracy = o.record["accuracy"] if o.record else None
        shown = f" {accuracy['mean']:.2f} ± {accuracy['ci95']:.2f}" if accuracy else ""
        print(f"{o.status}: {o.evaluation.cell.label}{shown} ({o.detail})")
    missing = [o for o in outcomes if o.status in ("no fit", "not saved")]
    if missing and len(missing) == len(outcomes):
        raise UserError(f"none of the {len(outcomes)} cell(s) has a saved learner under {runs}: "
                        f"run the suite there first ({missing[0].detail})")
    return 0


def _progress_factory(hidden: bool) -> Any:
    from tqdm import tqdm
    return lambda **kwargs: tqdm(leave=False, disable=True if hidden else None, **kwargs)


def _cmd_run(args: argparse.Namespace) -> int:
    from dfmlbench.analysis.cells import expand_analysis_cells, run_analysis_cell
    from dfmlbench.planning import parse_shard, shard
    from dfmlbench.reuse import ReuseIndex
    from dfmlbench.runner import adopt_reusable, budget_notice, run_cells, summary_table

    suite, config, cells = _resolved_cells(args)
    analyses = [] if args.method else expand_analysis_cells(config)
    if args.reuse and args.force:
        raise UserError("--reuse and --force do not mix: --force reruns every cell; drop one of them")
    reuse = ReuseIndex(args.reuse) if args.reuse else None
    if args.launcher:
        from dfmlbench.launch import launch
        if args.shard:
            raise UserError("--shard and --launcher do not mix: the launcher submits every pending cell itself")
        if reuse is not None:
            print(f"{len(adopt_reusable(cells, Path(args.out), reuse))} cell(s) copied in from --reuse")
        return launch(args, config, cells, analyses)
    if args.shard:
        index, count = parse_shard(args.shard)
        cells, analyses = shard(cells, Path(args.out), index, count), analyses[index - 1::count]
    print(f"suite {suite.name} (profile {config['profile']}): {len(cells) + len(analyses)} cell(s) -> {args.out}")
    # Method cells first: their pre-flight checks every input before anything runs.
    outcomes = run_cells(cells, Path(args.out), args.force, False if args.no_progress else None, reuse)
    for cell in analyses:
        status, _ = run_analysis_cell(cell, Path(args.out), args.force)
        print(f"{cell.label}: {status}")
    if outcomes:
        print(summary_table(outcomes))
        notice = budget_notice([o.cell for o in outcomes])
        if notice:
            print(notice)
    counts = {status: sum(o.status == status for o in outcomes) for status in ("ran", "recorded", "reused", "running")}
    failed = [o for o in outcomes if o.status == "failed"]
    elsewhere = f"{counts['running']} running elsewhere, " if counts["running"] else ""
    reused = f"{counts['reused']} copied in from --reuse, " if reuse is not None else ""
    print(f"{counts['ran']} cell(s) run, {counts['recorded']} already recorded, {reused}{elsewhere}"
          f"{len(failed)} failed; records under {args.out}")
    for o in failed:
        print(f"failed: {o.cell.label}: {o.record['error']} (traceback in {o.path})", file=sys.stderr)
    return 1 if failed else 0


def _cmd_results(args: argparse.Namespace) -> int:
    from dfmlbench.paths import write_bytes_atomic
    from dfmlbench.results import results_frame

    if not Path(args.runs).is_dir():
        raise UserError(f"--runs {args.runs} is not a folder; pass the folder given to run --out")
    frame = results_frame(Path(args.runs), args.suite)
    if args.csv:
        write_bytes_atomic(args.csv, frame.to_csv(index=False).encode())
        print(f"{len(frame)} record(s) written to {args.csv}")
        return 0
    if frame.empty:
        print(f"no records under {args.runs}" + (f" of suite {args.suite}" if args.suite else ""))
        return 0
    with _pd_options():
        print(frame.drop(columns=["config_hash", "record"]).to_string(index=False))
    print(f"{len(frame)} record(s); --csv FILE writes every column (config hash and record path too)")
    return 0


def _pd_options() -> Any:
    import pandas as pd
    return pd.option_context("display.width", 250, "display.max_columns", None, "display.float_format",
                             "{:.2f}".format)


def _cmd_list(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from dfmlbench.methods import METHODS
        entries = [(e.name, e.summary) for e in METHODS]
    elif args.what == "datasets":
        from dfmlbench.data import DATASETS
        entries = [(e.name, e.summary) for e in DATASETS]
    elif args.what == "analyses":
        from dfmlbench.analysis.cells import ANALYSES
        entries = [(e.name, e.summary) for e in ANALYSES]
    else:
        from dfmlbench.config import load_suite, suite_names
        entries = [(n, load_suite(n).description) for n in suite_names()]
    width = max(len(name) for name, _ in entries)
    for name, summary in entries:
        print(f"{name:<{width}}  {summary}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from dfmlbench.records import finished_record, load_per_episode, method_label, parse_record
    from dfmlbench.stats import paired_test

    records, per_episode = [], []
    for path in args.records:
        if not path.is_file():
            raise UserError(f"cannot read record {path}: no such file; pass the .json of a cell that ran")
        record, problem = parse_record(path)
        if record is not None:
            record, problem = finished_record(path.with_suffix(""), record.get("config_hash"))
        if record is None:
            raise UserError(f"{path} is not a finished dfmlbench record ({problem}); pass the .json of a "
                            "cell that ran, with its .episodes.npy beside it")
        records.append(record)
        per_episode.append(load_per_episode(path))
    a, b = records
    if a["test_episodes"]["sha"] != b["test_episodes"]["sha"] or len(per_episode[0]) != len(per_episode[1]):
        raise UserError("the two records were tested on different episodes; a paired test needs the same ones")
    test = paired_test(*per_episode)
    print(f"{method_label(a)}: {a['accuracy']['mean']:.2f} ± {a['accuracy']['ci95']:.2f}   "
          f"{method_label(b)}: {b['accuracy']['mean']:.2f} ± {b['accuracy']['ci95']:.2f}")
    print(f"difference {test.mean_difference:+.2f} ± {test.ci95:.2f} points over {test.n} paired episodes; "
          f"paired t-test p = {test.p_value:.3g}, Wilcoxon p = {test.wilcoxon_p:.3g}")
    return 0


def _cmd_report(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from dfmlbench.config import load_suite, parse_assignment, resolve
    from dfmlbench.paths import check_writable_folder
    from dfmlbench.reporting.report import make_report
    from dfmlbench.reporting.tables import to_markdown

    suite = load_suite(args.suite)
    config = resolve(suite, args.profile, [parse_assignment(a) for a in args.assignments])
    out = Path(args.out or f"reports/{suite.name}-{config['profile']}")
    check_writable_folder(out, "report --out")
    run_args = ["--suite", args.suite, "--profile", config["profile"], *[f"--set={a}" for a in args.assignments]]
    report = make_report(suite, config, Path(args.runs), out, "python -m dfmlbench " + shlex.join(argv),
                         run_args, args.fit_shot)
    if report.table is not None:
        print(to_markdown(report.table), end="")
    for path, _ in report.figures:
        print(f"figure: {path}")
    if len(report.devices) > 1:
        note(f"the records come from {len(report.devices)} devices or thread counts ({'; '.join(report.devices)}); "
             "results differ in the last digits between them")
    if report.missing:
        print(f"{len(report.missing)} cell(s) have no finished record, e.g. {report.missing[0]}; "
              f"the table shows them as –", file=sys.stderr)
    print(f"report written to {out}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from dfmlbench.data import DATASETS, load_dataset

    if args.data_command == "verify":
        from dfmlbench.data.verify import verify
        lines, ok = verify(args.datasets, args.data_root, args.strict)
        print("\n".join(lines))
        return 0 if ok else 1
    entry = DATASETS.get(args.dataset)
    if not entry.settings.get("download"):
        raise UserError(f"dataset '{entry.name}' cannot be downloaded by dfmlbench; "
                        f"`python -m dfmlbench data verify {entry.name}` says where to put its files")
    dataset = load_dataset(entry.name, args.data_root, download=True)
    print(f"{entry.name}: {len(dataset.images)} images of {len(dataset.class_names)} classes ready ({dataset.notes})")
    return 0


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed blocks instead of returning each large one to the kernel.

    Adaptation allocates and frees tens-of-MB activations every step; with glibc's
    defaults each is a fresh mmap whose pages the kernel zeroes again. Measured on the 2-core
    dev machine: 600 5-shot episodes spent as much time in the kernel as in PyTorch. No effect
    (and no error) where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve blocks below 1 GiB from the heap
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD: do not trim the heap eagerly
    except (OSError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    _keep_freed_memory()
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = _parser().parse_args(argv)
        if args.command == "report":
            return _cmd_report(args, argv)
        handler = {"run": _cmd_run, "plan": _cmd_plan, "evaluate": _cmd_evaluate, "results": _cmd_results, "list": _cmd_list, "compare": _cmd_compare,
                   "pool": _cmd_pool,
                   "data": _cmd_data}[args.command]
        return handler(args)
    except UserError as exc:
        print(f"dfmlbench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dfmlbench: interrupted; finished cells are recorded, rerun to resume", file=sys.stderr)
        return 130
