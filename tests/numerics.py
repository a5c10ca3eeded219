"""Comparing the numbers of two code paths so that a test holds on any x86-64 CPU and thread count.

Two paths that compute the same thing (a task axis vs its one-at-a-time oracle, two kernels, chunked
vs whole) round differently: the order of a reduction depends on the kernel, the CPU's vector
width (AVX-512, AVX2) and the thread count. So their floats are compared within a tolerance
sized to the computation, and their argmax predictions only where the logits' top-two margin
is wider than that tolerance can close.

In float32, 10 SGD steps on batch-statistics Conv4s amplify rounding discontinuously (a
max-pool near-tie broken the other way routes a gradient elsewhere): two correct meta-test
paths then differ by up to ~0.1 in a logit in rare episodes, while in float64 they agree to
~1e-14 (measured on glyphs, 60 episodes). Meta-test paths are therefore compared in float64
(`Float64Images`, `FLOAT64_PATHS`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

# Two float64 paths of a meta-test (10 SGD steps) agree to ~1e-14 relative; 1e-9 leaves five
# orders of magnitude for other CPUs and thread counts, while a real difference (another
# init, lr or step count) moves logits by more than 1e-3.
FLOAT64_PATHS = {"rtol": 1e-9, "atol": 1e-9}


def top_two_margin(logits: torch.Tensor) -> torch.Tensor:
    """The gap between the largest and second-largest logit of each row, shape logits.shape[:-1]."""
    top = logits.detach().double().topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def stable_mask(logits: torch.Tensor, margin: float | torch.Tensor, *more: torch.Tensor) -> torch.Tensor:
    """True for the rows (queries) whose top-two margin exceeds `margin` in `logits` and in each of
    `more`: where no perturbation within margin / 2 of every logit can change the argmax."""
    mask = top_two_margin(logits) > margin
    for other in more:
        mask &= top_two_margin(other) > margin
    return mask


def assert_stable_predictions_equal(logits_a: torch.Tensor, logits_b: torch.Tensor, *, rtol: float,
                                    atol: float, min_stable: float = 0.9) -> torch.Tensor:
    """Two paths' logits (..., classes) agree within (rtol, atol), and so do their argmax
    predictions on every query whose margin the tolerance cannot close (at least `min_stable`
    of them, or the check would be empty). Returns that stable mask, shape logits.shape[:-1]."""
    torch.testing.assert_close(logits_a, logits_b, rtol=rtol, atol=atol)
    # Each logit may move by atol + rtol * |logit|: the argmax can only change where the
    # top-two margin is at most twice the row's largest allowed move.
    allowed = atol + rtol * torch.maximum(logits_a.detach().abs(), logits_b.detach().abs()).double().amax(-1)
    stable = stable_mask(logits_a, 2 * allowed, logits_b)
    assert float(stable.double().mean()) >= min_stable, \
        f"only {int(stable.sum())} of {stable.numel()} predictions are stable at this tolerance"
    differ = (logits_a.argmax(-1) != logits_b.argmax(-1)) & stable
    assert not bool(differ.any()), f"{int(differ.sum())} stable predictions differ"
    return stable


def assert_accuracies_match(accuracies_a, accuracies_b, stable: torch.Tensor) -> None:
    """Per-episode accuracies (%) of two paths, from predictions equal on the `stable` queries
    (episodes, queries): equal for an episode whose queries are all stable, else different by
    at most its unstable queries."""
    a, b = np.asarray(accuracies_a, dtype=np.float64), np.asarray(accuracies_b, dtype=np.float64)
    stable = stable.reshape(len(a), -1).cpu().numpy()
    allowed = 100.0 * (~stable).sum(axis=1) / stable.shape[1]
    # + 1e-4 points: some paths average their hits in float32 (100 / 15 = 6.6666669...), far
    # below one query's share
    over = np.abs(a - b) > allowed + 1e-4
    assert not over.any(), (f"accuracies differ beyond their unstable queries at episodes {np.flatnonzero(over)}: "
                            f"{a[over]} vs {b[over]} (allowed {allowed[over]})")


def with_query_logits(monkeypatch, meta_test: Callable[[], np.ndarray]) -> tuple[np.ndarray, torch.Tensor]:
    """Run a meta-test (`evaluate` or `evaluate_reference`) and also return the query logits each
    episode's prediction was taken from, (episodes, queries, classes), in episode order (before
    any head-matching remap)."""
    import dfmlbench.evaluation as evaluation
    original, seen = evaluation._predict, []

    def predict(learner, support_logits, support_labels, query_logits, way):
        seen.append(query_logits.detach().cpu().clone())
        return original(learner, support_logits, support_labels, query_logits, way)

    monkeypatch.setattr(evaluation, "_predict", predict)
    try:
        accuracies = meta_test()
    finally:
        monkeypatch.setattr(evaluation, "_predict", original)
    return accuracies, torch.stack(seen)


class Float64Images:
    """A dataset whose normalised images come out in float64 (with a `.double()` learner, the
    whole meta-test then runs in float64); everything else is the wrapped dataset's."""

    def __init__(self, dataset) -> None:
        self._dataset = dataset

    def __getattr__(self, name: str):
        return getattr(self._dataset, name)

    def normalize(self, batch: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        return self._dataset.normalize(batch, device).double()


def assert_same_meta_test(monkeypatch, run_a: Callable[[], np.ndarray],
                          run_b: Callable[[], np.ndarray]) -> np.ndarray:
    """Two paths of one float64 meta-test (a `.double()` learner on `Float64Images`): the same
    query logits within FLOAT64_PATHS, the same predictions wherever that cannot flip them, so
    the same per-episode accuracies up to those. Returns the first path's accuracies."""
    a, logits_a = with_query_logits(monkeypatch, run_a)
    b, logits_b = with_query_logits(monkeypatch, run_b)
    assert logits_a.dtype == logits_b.dtype == torch.float64, "compare meta-test paths in float64"
    assert_accuracies_match(a, b, assert_stable_predictions_equal(logits_a, logits_b, **FLOAT64_PATHS))
    return a
