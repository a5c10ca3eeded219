"""A Conv4 training step (forward + backward, batch 75, 32 px): achieved GFLOP/s against the
machine's measured matrix-multiply peak, in the pre-kernel layout (contiguous NCHW) and in the
library's (dfmlbench.kernels.in_layout: channels-last on a CPU), at 1 and 2 threads. The
library / NCHW ratio at the machine's thread count is guarded (target x1.5).

Run: python -m pytest benchmarks -k throughput -s
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import baseline_paths
from speed import best_seconds, check_ratio, target
from dfmlbench.kernels import in_layout
from dfmlbench.models import build_model

BATCH, SIZE = 75, 32


def conv4_step_flops(batch: int, size: int, width: int = 32, channels: int = 3) -> float:
    """Multiply-adds x 2 of the four 3x3 convolutions, forward x 3 for forward + backward
    (input and weight gradients); BN, ReLU, pooling and the head are negligible beside them."""
    flops, side, c_in = 0.0, size, channels
    for _ in range(4):
        flops += 2.0 * c_in * 9 * width * side * side
        c_in, side = width, side // 2
    return 3.0 * flops * batch


def matmul_peak_gflops(n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2.0 * n ** 3 / best_seconds(lambda: a @ b, rounds=5) / 1e9


def step_seconds(threads: int, layout, frozen: bool) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = build_model("conv4", batch_stat_bn=True, generator=torch.Generator().manual_seed(0))
        model = baseline_paths.frozen_model(model) if frozen else model
        x, y = layout(torch.randn(BATCH, 3, SIZE, SIZE)), torch.arange(5).repeat(BATCH // 5)

        def step() -> None:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()

        step()
        return best_seconds(step, rounds=10)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", [1, 2])
def test_conv4_training_step_throughput(benchmark, threads):
    peak = matmul_peak_gflops()
    seconds = {"nchw": step_seconds(threads, lambda x: x, frozen=True),  # the blocks and layout before
               "library": step_seconds(threads, in_layout, frozen=False)}
    flops = conv4_step_flops(BATCH, SIZE)
    for name, s in seconds.items():
        achieved = flops / s / 1e9
        benchmark.extra_info.update({f"{name}_gflops": achieved, f"{name}_fraction_of_peak": achieved / peak})
        print(f"\nConv4 step, batch {BATCH}, {SIZE} px, {threads} thread(s), {name} layout: {s * 1e3:.1f} ms, "
              f"{achieved:.1f} GFLOP/s = {100 * achieved / peak:.0f}% of the {peak:.0f} GFLOP/s matmul peak")
    benchmark.extra_info.update(threads=threads, matmul_peak_gflops=peak)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    if threads == torch.get_num_threads():  # the configuration the library runs in
        check_ratio("Conv4 step", seconds["nchw"], seconds["library"], target("Conv4 step"), benchmark.extra_info)
