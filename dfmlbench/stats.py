"""Accuracy aggregation as the field reports it, and paired comparisons on shared episodes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

Z95 = 1.96


@dataclass(frozen=True)
class Summary:
    mean: float
    ci95: float
    std: float
    n: int

    def as_dict(self) -> dict[str, float | int | str]:
        return {"mean": self.mean, "ci95": self.ci95, "std": self.std, "n": self.n,
                "ci_method": "1.96*std/sqrt(n), std with ddof=0 (numpy population std)"}

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.ci95:.2f}"


def summarize(accuracies: np.ndarray) -> Summary:
    """Mean ± 1.96·std/√n with the population std (ddof=0), as the official codes compute it."""
    acc = np.asarray(accuracies, dtype=np.float64)
    if acc.size == 0:
        raise ValueError("no accuracies to summarise")
    std = float(acc.std(ddof=0))
    return Summary(float(acc.mean()), Z95 * std / math.sqrt(acc.size), std, int(acc.size))


@dataclass(frozen=True)
class PairedTest:
    mean_difference: float
    ci95: float
    t_statistic: float
    p_value: float
    wilcoxon_p: float
    n: int


def paired_test(a: np.ndarray, b: np.ndarray) -> PairedTest:
    """Two methods on the same episodes: paired t-test and Wilcoxon signed-rank on a - b."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs the same episodes: {a.shape} vs {b.shape}")
    diff = a - b
    if np.allclose(diff, 0):
        return PairedTest(0.0, 0.0, 0.0, 1.0, 1.0, diff.size)
    t = sps.ttest_rel(a, b)
    w = sps.wilcoxon(a, b, zero_method="zsplit")
    ci = Z95 * diff.std(ddof=1) / math.sqrt(diff.size)
    return PairedTest(float(diff.mean()), float(ci), float(t.statistic), float(t.pvalue),
                      float(w.pvalue), diff.size)
