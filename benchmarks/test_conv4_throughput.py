"""A Conv4 training step (forward + backward, batch 75, 32 px): achieved GFLOP/s against the
machine's measured matrix-multiply peak, in the default memory format and channels-last, at 1
and 2 threads. Reported, not guarded (docs/performance.md records what helped).

Run: python -m pytest benchmarks -k throughput -s
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from speed import best_seconds
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


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv4_training_step_throughput(benchmark, threads, channels_last):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = build_model("conv4", batch_stat_bn=True, generator=torch.Generator().manual_seed(0))
        x, y = torch.randn(BATCH, 3, SIZE, SIZE), torch.arange(5).repeat(BATCH // 5)
        if channels_last:
            model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)

        def step() -> None:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()

        step()
        seconds = best_seconds(step, rounds=10)
        peak = matmul_peak_gflops()
        benchmark.pedantic(step, rounds=3, iterations=1)
    finally:
        torch.set_num_threads(previous)
    achieved = conv4_step_flops(BATCH, SIZE) / seconds / 1e9
    benchmark.extra_info.update(gflops=achieved, matmul_peak_gflops=peak, fraction_of_peak=achieved / peak,
                                threads=threads, channels_last=channels_last)
    print(f"\nConv4 step, batch {BATCH}, {SIZE} px, {threads} thread(s), channels_last={channels_last}: "
          f"{seconds * 1e3:.1f} ms, {achieved:.1f} GFLOP/s = {100 * achieved / peak:.0f}% of the "
          f"{peak:.0f} GFLOP/s matmul peak")
