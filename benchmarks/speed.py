"""Shared by the speed benchmarks: best-of timing, and the ratio guard CI relies on.

Ratios between two paths measured in one process on one machine are what we guard: absolute
times on shared machines are noise. A ratio below half its target fails the benchmark.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# Speed-up targets of the library's paths over the frozen pre-kernel baseline (baseline_paths.py,
# today's CPU defaults): issue 14's. No GPU was lent to measure CUDA targets; there the
# baseline is the same code on the device, so the CPU targets are not claimed for it.
TARGETS = {
    "cpu": {"meta-test 1-shot": 2.0, "meta-test 5-shot": 2.0, "FREE epoch": 2.0, "Conv4 step": 1.5},
    "cuda": {"meta-test 1-shot": 1.0, "meta-test 5-shot": 1.0, "FREE epoch": 1.0, "Conv4 step": 1.0},
}


def target(name: str) -> float:
    return TARGETS[DEVICE.type][name]


def synchronized(function: Callable[[], object]) -> Callable[[], object]:
    """`function`, then wait for the GPU: a timing must include the work it queued."""
    def run() -> object:
        result = function()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)
        return result
    return run


def best_seconds(function: Callable[[], object], rounds: int) -> float:
    """The fastest of `rounds` calls (the least disturbed by other load)."""
    times = []
    function = synchronized(function)
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def check_ratio(name: str, baseline_seconds: float, library_seconds: float, target: float,
                extra_info: dict) -> float:
    """Print baseline / library (the speed-up), and fail below half its target (the CI guard)."""
    ratio = baseline_seconds / library_seconds
    extra_info.update({f"{name}_baseline_seconds": baseline_seconds,
                       f"{name}_library_seconds": library_seconds,
                       f"{name}_speedup": ratio, f"{name}_target": target})
    print(f"\n{name}: baseline {baseline_seconds:.3f} s, library {library_seconds:.3f} s, "
          f"speed-up x{ratio:.2f} (target x{target:g}, guard x{target / 2:g})")
    assert ratio >= target / 2, (f"{name}: the library is only x{ratio:.2f} faster than the baseline, "
                                 f"below half the x{target:g} target")
    return ratio
