"""The paired comparisons a suite names (`report.comparisons`): for each pair of methods, on each
dataset, shot and sweep point where both have a finished result on the same test episodes, the
mean difference with its 95% CI, the paired t-test and the Wilcoxon signed-rank test.

The pairs are the paper's claims (FREE above PURER, FREE_5 above FREE_2, ...), fixed in the suite
file before any result is read; the report states each whichever way it comes out. Like the
table, the output depends on the records only, so it regenerates byte for byte."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dfmlbench.errors import UserError
from dfmlbench.registry import did_you_mean
from dfmlbench.reporting.collect import Aggregate
from dfmlbench.stats import PairedTest, paired_test

SIGNIFICANCE = 0.05
PAIRED_FILE = "paired.md"


@dataclass(frozen=True)
class Comparison:
    first: Aggregate
    second: Aggregate
    test: PairedTest


def parse_pairs(raw: Any, suite_name: str) -> list[tuple[str, str]]:
    """`report.comparisons` as (method, method) pairs; one line of error for a malformed entry. A pair
    whose methods a profile does not run (smoke) simply has no rows."""
    from dfmlbench.methods import METHODS
    if raw is None:
        return []
    pairs = []
    for entry in raw if isinstance(raw, list) else [raw]:
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(m, str) for m in entry)):
            raise UserError(f"suite '{suite_name}' report.comparisons: each entry must be a pair of method "
                            f"names like [free, purer], got {entry!r}")
        unknown = [m for m in entry if m not in METHODS.names()]
        if unknown:
            raise UserError(f"suite '{suite_name}' report.comparisons names {unknown[0]!r}, which is not a "
                            f"method: {did_you_mean(unknown[0], METHODS.names())}")
        pairs.append((entry[0], entry[1]))
    return pairs


def compare_pairs(results: dict[Any, Aggregate], pairs: list[tuple[str, str]]) -> list[Comparison]:
    """Every pair at every (dataset, shot, sweep) where both sides are complete on the same episodes."""
    comparisons = []
    for first_method, second_method in pairs:
        for (method, dataset, shot, sweep), first in results.items():
            second = results.get((second_method, dataset, shot, sweep))
            if method != first_method or second is None or not _paired(first, second):
                continue
            comparisons.append(Comparison(first, second,
                                          paired_test(first.per_episode, second.per_episode)))  # type: ignore[arg-type]
    return comparisons


def _paired(first: Aggregate, second: Aggregate) -> bool:
    return (first.per_episode is not None and second.per_episode is not None
            and first.episodes_sha == second.episodes_sha and first.per_episode.shape == second.per_episode.shape)


def _p(value: float) -> str:
    return f"{value:.2g}" if value > 0 else "<1e-300"  # below float range


def _verdict(test: PairedTest) -> str:
    if test.p_value >= SIGNIFICANCE:
        return "no significant difference"
    return "first above" if test.mean_difference > 0 else "first below"


def to_markdown(comparisons: list[Comparison]) -> str:
    lines = ["| first | second | cell | first acc. | second acc. | difference (points) | t-test p | "
             "Wilcoxon p | episodes | at 0.05 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        a, b, t = c.first, c.second, c.test
        sweep = "".join(f", {k}={v}" for k, v in a.sweep.items())
        lines.append(f"| {a.label} | {b.label} | {a.dataset} 5-way {a.shot}-shot{sweep} | {a.mean:.2f} | "
                     f"{b.mean:.2f} | {t.mean_difference:+.2f} ± {t.ci95:.2f} | {_p(t.p_value)} | "
                     f"{_p(t.wilcoxon_p)} | {t.n} | {_verdict(t)} |")
    return "\n".join(lines) + "\n"


__all__ = ["Comparison", "PAIRED_FILE", "compare_pairs", "parse_pairs", "to_markdown"]
