"""`python -m dfmlbench report`: a suite's table and figures from its records alone.

The suite's `report` block says what to draw:

    report:
      table: table2                  # the paper table whose values sit beside each cell
      reference: {omniglot: cifar-fs}  # show a paper dataset's values beside another's cells
      figures: [task_grid]           # tsne, grad_inner_product, accuracy_vs_teachers, task_grid,
                                     # accuracy_vs_recovery
      comparisons: [[free, purer]]   # paired tests written to paired.md (reporting/paired.py)
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dfmlbench.config import Suite
from dfmlbench.errors import UserError
from dfmlbench.paths import write_bytes_atomic
from dfmlbench.registry import did_you_mean
from dfmlbench.reuse import reused_label
from dfmlbench.reporting.collect import Aggregate, Found, FoundAnalysis, aggregate, collect
from dfmlbench.reporting.paired import PAIRED_FILE, Comparison, compare_pairs, parse_pairs
from dfmlbench.reporting.paired import to_markdown as paired_markdown
from dfmlbench.reporting.paper import paper_table
from dfmlbench.reporting.pools import CAPTION as POOLS_CAPTION
from dfmlbench.reporting.pools import pool_rows
from dfmlbench.reporting.tables import Table, build_table, to_csv, to_latex, to_markdown

FIGURE_KINDS = ("tsne", "grad_inner_product", "accuracy_vs_teachers", "task_grid", "accuracy_vs_recovery")
# The equal recovery budgets at which accuracy_vs_recovery tabulates meta-val accuracy.
RECOVERY_BUDGETS_SECONDS = (60, 180, 600)
SWEPT_POOL_SIZE = "pool.num_teachers"


@dataclass
class Report:
    out_dir: Path
    table: Table | None
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (file, caption)
    missing: list[str] = field(default_factory=list)  # cells without a finished record
    devices: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # the finished method records used


def make_report(suite: Suite, config: dict[str, Any], runs_dir: Path, out_dir: Path,
                command: str, run_args: list[str], fit_shot: int | None = None) -> Report:
    """`run_args`: the suite, profile and --set arguments that select the records, for the
    README's "made by" command."""
    layout = suite.report
    figures = list(layout.get("figures") or [])
    for kind in figures:
        if kind not in FIGURE_KINDS:
            raise UserError(f"suite '{suite.name}' report.figures names '{kind}': "
                            f"{did_you_mean(kind, list(FIGURE_KINDS))}")
    pairs = parse_pairs(layout.get("comparisons"), suite.name)
    if not Path(runs_dir).is_dir():
        raise UserError(f"no records folder {runs_dir}: run `python -m dfmlbench run --suite {suite.name} "
                        f"--profile {config['profile']} --out {runs_dir}` first, or pass --runs")
    found, analyses = collect(config, Path(runs_dir), suite, fit_shot)
    if not any(f.record for f in found) and not any(a.record for a in analyses):
        raise UserError(f"no finished records of suite '{suite.name}' (profile {config['profile']}) under "
                        f"{runs_dir}: run `python -m dfmlbench run --suite {suite.name} --profile "
                        f"{config['profile']} --out {runs_dir}` first")
    results = aggregate(found)
    report = Report(Path(out_dir), None)
    report.records = [f.record for f in found if f.record is not None]
    report.missing = [f"{f.cell.label}" for f in found if f.record is None]
    report.missing += [a.cell.label for a in analyses if a.record is None]
    report.devices = sorted({d for r in results.values() for d in r.devices}
                            | {a.record["environment"]["device_name"] for a in analyses if a.record})
    if found:
        paper = paper_table(layout["table"]) if layout.get("table") else None
        title = (f"{paper.caption if paper else suite.description} — dfmlbench suite {suite.name}, "
                 f"profile {config['profile']}")
        report.table = build_table(results, config["methods"], config["datasets"],
                                   [int(s) for s in config["shots"]], paper,
                                   dict(layout.get("reference") or {}), title)
        write_table(report.table, report.out_dir)
    report.comparisons = compare_pairs(results, pairs)
    if report.comparisons:
        write_bytes_atomic(report.out_dir / PAIRED_FILE, paired_markdown(report.comparisons).encode())
    for kind in figures:
        report.figures += FIGURE_BUILDERS[kind](results, analyses, report.out_dir)
    write_readme(report, suite, config, command, made_by(report, run_args, runs_dir))
    return report


def write_table(table: Table, out_dir: Path) -> None:
    for name, text in (("table.md", to_markdown(table)), ("table.tex", to_latex(table)),
                       ("table.csv", to_csv(table))):
        write_bytes_atomic(out_dir / name, text.encode())


# --- figures: each builder gathers its data from the records and draws with reporting.figures ---

Results = dict[Any, Aggregate]


def _tsne(results: Results, analyses: list[FoundAnalysis], out_dir: Path) -> list[tuple[Path, str]]:
    from dfmlbench.reporting.figures import plot_teacher_tsne
    made = []
    for item in analyses:
        if item.record is None or item.record["analysis"] != "teacher-features":
            continue
        info = item.record["info"]
        names = [f"teacher {i} ({arch})" for i, arch in zip(info["teacher_indices"], info["teacher_archs"])]
        path = out_dir / f"fig4-tsne-{item.cell.dataset}-seed{item.cell.seed}.png"
        features = item.arrays()["features"]
        plot_teacher_tsne(features, names, path, seed=item.cell.seed,
                          title=f"{features.shape[1]} images of class '{info['class_name']}' "
                                f"through {features.shape[0]} teachers ({item.cell.dataset})")
        made.append((path, f"Fig. 4: t-SNE of the features of the same {features.shape[1]} "
                           f"{item.cell.dataset} images (class '{info['class_name']}') through "
                           f"{features.shape[0]} teachers, coloured by teacher."))
    return made


def _grad_inner_product(results: Results, analyses: list[FoundAnalysis], out_dir: Path) -> list[tuple[Path, str]]:
    from dfmlbench.reporting.figures import plot_curves
    made = []
    for dataset, shot in dict.fromkeys((r.dataset, r.shot) for r in results.values()):
        series = {}
        for r in results.values():
            runs = [c["grad_inner_product"] for c in r.curves if c.get("grad_inner_product")]
            if r.dataset == dataset and r.shot == shot and runs:
                series[r.label] = [[(float(s), float(v)) for s, v in run] for run in runs]
        if not series:
            continue
        path = out_dir / f"fig5-grad-inner-product-{dataset}-{shot}shot.png"
        plot_curves(series, path, xlabel="epoch",
                    ylabel="mean pairwise inner product of task KD gradients",
                    title=f"Gradient inner product across tasks ({dataset}, 5-way {shot}-shot)")
        made.append((path, f"Fig. 5: mean pairwise inner product of the b tasks' KD gradients at θ per "
                           f"epoch ({dataset}, 5-way {shot}-shot), for {', '.join(series)}."))
    return made


def _accuracy_vs_teachers(results: Results, analyses: list[FoundAnalysis],
                          out_dir: Path) -> list[tuple[Path, str]]:
    from dfmlbench.reporting.figures import plot_accuracy_vs_teachers
    made = []
    for dataset in dict.fromkeys(r.dataset for r in results.values()):
        series: dict[int, dict[str, list[tuple[int, float, float]]]] = {}
        for r in results.values():
            if r.dataset == dataset and r.complete and SWEPT_POOL_SIZE in r.sweep:
                points = series.setdefault(r.shot, {}).setdefault(r.label, [])
                points.append((int(r.sweep[SWEPT_POOL_SIZE]), float(r.mean), float(r.ci95 or 0.0)))
        if not series:
            continue
        for by_label in series.values():
            for points in by_label.values():
                points.sort()
        path = out_dir / f"fig6-accuracy-vs-teachers-{dataset}.png"
        plot_accuracy_vs_teachers(dict(sorted(series.items())), path,
                                  title=f"Accuracy vs number of pre-trained models ({dataset})")
        made.append((path, f"Fig. 6: meta-test accuracy (mean ± 95% CI over the shared episodes) against "
                           f"the number of teachers in the pool ({dataset})."))
    return made


def _task_grid(results: Results, analyses: list[FoundAnalysis], out_dir: Path) -> list[tuple[Path, str]]:
    from dfmlbench.reporting.figures import plot_task_grid
    made = []
    for r in results.values():
        for seed, folder in zip(r.seeds, r.artifacts):
            image = folder / "recovered_task.png"
            if not image.is_file():
                continue
            path = out_dir / f"fig7-recovered-task-{r.method}-{r.dataset}-{r.shot}shot-seed{seed}.png"
            way = 5
            plot_task_grid(image, path, way=way, per_class=_per_class(image, way),
                           title=f"A 5-way task recovered by {r.label} ({r.dataset}, seed {seed})")
            made.append((path, f"Fig. 7: the last recovered 5-way task of {r.label} on {r.dataset} "
                               f"({r.shot}-shot run, seed {seed}); one row per class."))
    return made


def _cost_curve(curves: dict[str, Any]) -> list[tuple[float, float, float]]:
    """(recovery s, training s, val accuracy) at each validation step that logged its costs."""
    from dfmlbench.method import RECOVERY_CURVE, TRAIN_CURVE
    recovery, train = dict(curves.get(RECOVERY_CURVE) or []), dict(curves.get(TRAIN_CURVE) or [])
    return [(float(recovery[step]), float(train[step]), float(value))
            for step, value in curves.get("val_accuracy") or [] if step in recovery and step in train]


def _accuracy_at_budgets(runs: list[list[tuple[float, float, float]]]) -> list[str]:
    """Per budget: the mean over runs of the last meta-val accuracy measured within that much
    recovery; a run that finished with less recovery gives its last value, marked *."""
    cells = []
    for budget in RECOVERY_BUDGETS_SECONDS:
        values, finished_early = [], False
        for run in runs:
            within = [accuracy for recovery, _, accuracy in run if recovery <= budget]
            if within:
                values.append(within[-1])
                finished_early |= run[-1][0] < budget
        cells.append("–" if len(values) < len(runs) else f"{sum(values) / len(values):.2f}{'*' if finished_early else ''}")
    return cells


def _accuracy_vs_recovery(results: Results, analyses: list[FoundAnalysis], out_dir: Path) -> list[tuple[Path, str]]:
    from dfmlbench.reporting.figures import plot_accuracy_vs_cost
    made = []
    for dataset, shot in dict.fromkeys((r.dataset, r.shot) for r in results.values()):
        series: dict[str, list[list[tuple[float, float, float]]]] = {}
        for r in results.values():
            runs = [run for run in (_cost_curve(c) for c in r.curves) if run]
            if r.dataset == dataset and r.shot == shot and runs:
                series[r.label] = runs
        if not series:
            continue
        path = out_dir / f"accuracy-vs-recovery-{dataset}-{shot}shot.png"
        plot_accuracy_vs_cost(series, path, title=f"Meta-val accuracy against cost ({dataset}, 5-way {shot}-shot)")
        minutes = [f"{b // 60} min" for b in RECOVERY_BUDGETS_SECONDS]
        rows = [f"| {label} | {' | '.join(_accuracy_at_budgets(runs))} | {max(run[-1][0] for run in runs) / 60:.1f} |"
                for label, runs in series.items()]
        table = "\n".join([f"| method | {' | '.join(f'val acc. at {m} of recovery' for m in minutes)} | "
                           "recovery at the end (min) |", "|---|" + "---|" * (len(minutes) + 1), *rows])
        made.append((path, f"Meta-val accuracy at each validation point against the cumulative data-recovery "
                           f"time and the training time (validation excluded) of the same run ({dataset}, "
                           f"5-way {shot}-shot), on the device this report names.\n\n{table}\n\n"
                           "Each value is the last meta-val accuracy measured within that much recovery (mean "
                           "over seeds); * marks a run that ended with less recovery than the budget (its "
                           "last value); – a budget before the first validation."))
    return made


def _per_class(image: Path, way: int) -> int:
    """Columns of a save_image grid (padding 1) from its size: rows are the `way` classes."""
    from PIL import Image
    with Image.open(image) as img:
        width, height = img.size
    side = (height - 1) // way - 1
    return max(1, (width - 1) // (side + 1))


FIGURE_BUILDERS: dict[str, Callable[[Results, list[FoundAnalysis], Path], list[tuple[Path, str]]]] = {
    "tsne": _tsne, "grad_inner_product": _grad_inner_product,
    "accuracy_vs_teachers": _accuracy_vs_teachers, "task_grid": _task_grid,
    "accuracy_vs_recovery": _accuracy_vs_recovery,
}


def made_by(report: Report, run_args: list[str], runs_dir: Path) -> str:
    """The command that wrote the report's records: `run`, or `evaluate` where they re-test
    learners that `run` fitted under another protocol (e.g. protocol.lr_grid)."""
    if any(r.get("evaluation_of") for r in report.records):
        argv = ["evaluate", *run_args, "--runs", str(runs_dir), "--out", str(runs_dir)]
    else:
        folders = dict.fromkeys(r["reused_from"]["folder"] for r in report.records if reused_label(r))
        argv = ["run", *run_args, "--out", str(runs_dir), *[a for folder in folders for a in ("--reuse", folder)]]
    return "python -m dfmlbench " + shlex.join(argv)


def write_readme(report: Report, suite: Suite, config: dict[str, Any], command: str, run_command: str) -> None:
    reused = [r for r in report.records if reused_label(r)]
    lines = [f"# {suite.name} ({config['profile']} profile)", "", suite.description, "",
             "Records made by, and report made from them by:", "", "```", run_command, command, "```", "",
             f"- Profile: `{config['profile']}`; only records of this profile and configuration are used.",
             f"- Device(s): {', '.join(report.devices) or 'none'}.",
             f"- Seeds: {', '.join(map(str, config['seeds']))}."]
    if report.table is not None:
        lines[-1] += (f" Test episodes: {config['protocol']['test_episodes']}, the same for every method "
                      f"(paired tests).")
    if report.table is not None:
        lines += ["", "## Table", "", to_markdown(report.table).rstrip(), "",
                  "Accuracy: mean ± 1.96·std/√n over the test episodes (std with ddof 0; with several seeds, "
                  "the mean of the seed means and the CI of the seed-averaged episode accuracies, sd = "
                  "spread of the seed means). Best of each column in bold; p = paired t-test against it "
                  "on the same episodes (≈: not significantly below the best at 0.05). Time: hours of data "
                  "recovery only, on the device above; the paper's on one RTX 3090. Paper columns are the "
                  "published values (dfmlbench/reporting/paper_values.yaml); where the dataset differs "
                  "(cpu profiles), they are for orientation, not comparison.",
                  "", "Also: `table.tex`, `table.csv`."]
    if report.comparisons:
        lines += ["", "## Paired comparisons", "", paired_markdown(report.comparisons).rstrip(), "",
                  "The pairs the suite names (`report.comparisons`: the paper's claims, fixed before any "
                  "result), on the same test episodes: difference = first − second, mean ± 1.96·sd/√n of "
                  "the per-episode differences (sd with ddof 1); two-sided paired t-test and Wilcoxon "
                  f"signed-rank test. Also: `{PAIRED_FILE}`."]
    pools = pool_rows(report.records)
    if pools:
        lines += ["", "## Teacher pools", "", *pools, "", POOLS_CAPTION]
    if reused:
        lines += ["", "## Reused records", "",
                  *[f"- {r['method']} {r['dataset']} {r['way']}w{r['shot']}s seed {r['seed']}"
                    + "".join(f" {key}={value}" for key, value in (r.get("sweep") or {}).items()) + ": computed as "
                    f"{reused_label(r)} (record {r['reused_from']['config_hash']}), the same config but the "
                    "names; its numbers, device and dates are that run's" for r in reused],
                  "", "Copied in by `run --reuse` (`dfmlbench/reuse.py`) instead of being run again."]
    if report.figures:
        lines += ["", "## Figures", ""]
        for path, caption in report.figures:
            lines += [f"![{path.name}]({path.name})", "", caption, ""]
    if report.missing:
        lines += ["", "## Missing cells", "", *[f"- {m}" for m in report.missing]]
    write_bytes_atomic(report.out_dir / "README.md", ("\n".join(lines).rstrip() + "\n").encode())


__all__ = ["FIGURE_KINDS", "Report", "make_report", "Found", "FoundAnalysis"]
