"""A results table in the paper's layout (methods x dataset/shot columns + Time), with the
paper's values beside each cell, the best cell in bold and a paired test against it; rendered
as Markdown, LaTeX and CSV. Output depends on the records only (no dates, no paths), so a
report regenerated from committed records is byte for byte the committed one."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from dfmlbench.reporting.collect import Aggregate
from dfmlbench.reporting.paper import PaperTable
from dfmlbench.stats import paired_test

SIGNIFICANCE = 0.05


@dataclass
class TableCell:
    result: Aggregate
    best: bool = False
    p_vs_best: float | None = None  # paired t-test against the column's best, same episodes
    paper: tuple[float, float] | None = None


@dataclass
class Row:
    key: tuple[str, tuple[tuple[str, Any], ...]]  # method, sweep point
    label: str
    cells: dict[tuple[str, int], TableCell]
    hours: dict[str, float | None]  # dataset -> recovery hours (mean over seeds and shots)
    paper_hours: dict[str, float | None]


@dataclass
class Table:
    title: str
    datasets: list[str]
    shots: list[int]
    rows: list[Row]
    reference: dict[str, str]  # record dataset -> dataset whose paper values are shown
    show_time: bool
    show_paper: bool
    device: str = ""  # where the Time column was measured
    paper_device: str = ""
    domains: dict[str, list[str]] = field(default_factory=dict)  # dataset -> its domains (multi-domain)

    def paper_name(self, dataset: str) -> str:
        return self.reference.get(dataset, dataset)


def build_table(results: dict[Any, Aggregate], methods: list[str], datasets: list[str], shots: list[int],
                paper: PaperTable | None, reference: dict[str, str], title: str) -> Table:
    rows: list[Row] = []
    row_keys = list(dict.fromkeys((r.method, key[3]) for key, r in results.items()))
    row_keys.sort(key=lambda k: methods.index(k[0]) if k[0] in methods else len(methods))
    for method, sweep in row_keys:
        cells, hours = {}, {}
        for dataset in datasets:
            seconds = []
            for shot in shots:
                result = results.get((method, dataset, shot, sweep))
                if result is None:
                    continue
                paper_value = paper.accuracy(method, reference.get(dataset, dataset), shot) if paper else None
                cells[(dataset, shot)] = TableCell(result, paper=paper_value)
                if result.recovery_hours is not None:
                    seconds.append(result.recovery_hours)
            hours[dataset] = sum(seconds) / len(seconds) if seconds else None
        any_result = next(iter(cells.values())).result if cells else None
        label = any_result.label if any_result else method
        if sweep:
            label += " (" + ", ".join(f"{k}={v}" for k, v in sweep) + ")"
        paper_hours = {d: paper.hours(method, reference.get(d, d)) if paper else None for d in datasets}
        rows.append(Row((method, sweep), label, cells, hours, paper_hours))
    for dataset in datasets:
        for shot in shots:
            _mark_best(rows, (dataset, shot))
    show_time = any(h is not None for row in rows for h in [*row.hours.values(), *row.paper_hours.values()])
    devices = sorted({d for row in rows for c in row.cells.values() for d in c.result.devices})
    domains = {dataset: list(dict.fromkeys(name for row in rows for (d, _), c in row.cells.items()
                                           if d == dataset for name in c.result.per_domain))
               for dataset in datasets}
    return Table(title, datasets, shots, rows, reference, show_time, paper is not None,
                 " + ".join(devices) or "no device", paper.device if paper else "",
                 {d: names for d, names in domains.items() if names})


def _mark_best(rows: list[Row], column: tuple[str, int]) -> None:
    cells = [row.cells[column] for row in rows if column in row.cells and row.cells[column].result.complete]
    if not cells:
        return
    best = max(cells, key=lambda c: c.result.mean)  # type: ignore[arg-type, return-value]
    best.best = True
    for cell in cells:
        if cell is best or cell.result.per_episode is None or best.result.per_episode is None:
            continue
        if cell.result.episodes_sha == best.result.episodes_sha:
            cell.p_vs_best = paired_test(cell.result.per_episode, best.result.per_episode).p_value


# --- formatting ---------------------------------------------------------------------------------

def _accuracy(cell: TableCell | None) -> str:
    if cell is None or not cell.result.complete:
        return "–"
    r = cell.result
    text = f"{r.mean:.2f} ± {r.ci95:.2f}" if r.ci95 is not None else f"{r.mean:.2f}"
    if len(r.seeds) > 1:
        text += f" ({len(r.seeds)} seeds, sd {r.seed_sd:.2f})"
    return text


def _p(cell: TableCell | None) -> str:
    if cell is None or cell.p_vs_best is None:
        return ""
    mark = "" if cell.p_vs_best < SIGNIFICANCE else " ≈"
    value = f"p={cell.p_vs_best:.2g}" if cell.p_vs_best > 0 else "p<1e-300"  # below float range
    return value + mark


def _paper(value: tuple[float, float] | None) -> str:
    return f"{value[0]:.2f} ± {value[1]:.2f}" if value else "–"


def _hours(value: float | None) -> str:
    return f"{value:.3g}" if value is not None else "–"


def _shot_name(shot: int) -> str:
    return f"5-way {shot}-shot"


def _columns(table: Table) -> list[tuple[str, str]]:
    """(header, kind) pairs after the method column."""
    columns = []
    for dataset in table.datasets:
        paper_name = table.paper_name(dataset)
        for shot in table.shots:
            columns.append((f"{dataset} {_shot_name(shot)}", "acc"))
            columns += [(f"· {domain} {_shot_name(shot)}", "domain") for domain in table.domains.get(dataset, [])]
            if table.show_paper:
                columns.append((f"paper ({paper_name})", "paper"))
        if table.show_time:
            columns.append((f"{dataset} Time (h, {table.device})", "time"))
            if table.show_paper:
                columns.append((f"paper Time (h, {paper_name}, {table.paper_device})", "paper_time"))
    return columns


def _row_values(table: Table, row: Row, bold: tuple[str, str]) -> list[str]:
    values = []
    for dataset in table.datasets:
        for shot in table.shots:
            cell = row.cells.get((dataset, shot))
            text = _accuracy(cell)
            text = f"{bold[0]}{text}{bold[1]}" if cell is not None and cell.best else text
            values.append(f"{text} ({_p(cell)})" if _p(cell) else text)
            for domain in table.domains.get(dataset, []):
                part = cell.result.per_domain.get(domain) if cell else None
                values.append(f"{part[0]:.2f} ± {part[1]:.2f}" if part else "–")
            if table.show_paper:
                values.append(_paper(cell.paper if cell else None))
        if table.show_time:
            values.append(_hours(row.hours.get(dataset)))
            if table.show_paper:
                values.append(_hours(row.paper_hours.get(dataset)))
    return values


def to_markdown(table: Table) -> str:
    headers = ["method", *(h for h, _ in _columns(table))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in table.rows:
        lines.append("| " + " | ".join([row.label, *_row_values(table, row, ("**", "**"))]) + " |")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    return (text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%")
            .replace("&", r"\&").replace("#", r"\#").replace("±", r"$\pm$").replace("≈", r"$\approx$")
            .replace("–", "--"))


def to_latex(table: Table) -> str:
    columns = _columns(table)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{l" + "c" * len(columns) + "}", r"\toprule",
             " & ".join(["Method", *(_latex_escape(h) for h, _ in columns)]) + r" \\", r"\midrule"]
    for row in table.rows:
        values = [_latex_escape(v) for v in _row_values(table, row, ("<<b>>", "<</b>>"))]
        values = [v.replace("<<b>>", r"\textbf{").replace("<</b>>", "}") for v in values]
        lines.append(" & ".join([_latex_escape(row.label), *values]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_latex_escape(table.title)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["method", "label", "sweep", "dataset", "shot", "seeds", "missing_seeds", "mean", "ci95",
              "seed_sd", "best", "p_vs_best", "recovery_hours", "devices", "paper_dataset",
              "paper_mean", "paper_ci95", "paper_time_h"]


def to_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in table.rows:
        for (dataset, shot), cell in row.cells.items():
            r = cell.result
            writer.writerow({
                "method": r.method, "label": r.label,
                "sweep": ";".join(f"{k}={v}" for k, v in r.sweep.items()),
                "dataset": dataset, "shot": shot,
                "seeds": " ".join(map(str, r.seeds)), "missing_seeds": " ".join(map(str, r.missing_seeds)),
                "mean": _num(r.mean), "ci95": _num(r.ci95), "seed_sd": _num(r.seed_sd),
                "best": int(cell.best), "p_vs_best": _num(cell.p_vs_best, ".4g"),
                "recovery_hours": _num(r.recovery_hours, ".6g"), "devices": " | ".join(r.devices),
                "paper_dataset": table.paper_name(dataset),
                "paper_mean": _num(cell.paper[0] if cell.paper else None),
                "paper_ci95": _num(cell.paper[1] if cell.paper else None),
                "paper_time_h": _num(row.paper_hours.get(dataset)),
            })
    return out.getvalue()


def _num(value: float | None, spec: str = ".4f") -> str:
    return format(value, spec) if value is not None else ""
