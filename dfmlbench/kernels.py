"""How a task axis is computed on the device at hand: the one place that decides it.

Every repeated computation in the library (the meta-test's episodes, FIVE's b recoveries,
PURER's chosen teachers, BiDf-MKD's generation events, a MAML meta-batch) is written once, as
a function of one task, and handed to `task_map(fn, tasks)`. That function draws no random
numbers from a shared generator (each task gets its own, `task_generators`), uses only its own
modules (or read-only shared ones), and calls no functional_call on a module another task
uses (functional_call swaps the module's attributes), so any schedule gives the same numbers.

Kernels:
- "threads" (the CPU default with two or more intra-op threads): the tasks run on a pool of
  worker threads, one per intra-op thread, each task with the threads left to it (one when
  there are at least as many tasks as threads). Small Conv4 tasks are dominated by
  per-operation cost and scale poorly inside an operation; across tasks they scale with the
  cores (measured, docs/performance.md).
- "loop" (CUDA, or a CPU with one thread): the tasks in order on the calling thread. On CUDA
  their kernels queue asynchronously on one stream.

Both kernels compute each task identically but for the intra-op thread count, which only
changes float rounding. `DFMLBENCH_TASK_KERNEL=loop|threads` forces a kernel (tests and
benchmarks compare them). The layout is decided here too: channels-last on CPUs, where
oneDNN's convolutions, pooling and nearest upsampling are 1.3-8x faster in it.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import torch

from dfmlbench.errors import UserError

Task = TypeVar("Task")
Result = TypeVar("Result")
KERNELS = ("threads", "loop")
WORKER_PREFIX = "dfmlbench-task"
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def kernel_for(device: torch.device | str) -> str:
    """The kernel for `device`: "threads" on a CPU with >= 2 intra-op threads, else "loop"."""
    forced = os.environ.get("DFMLBENCH_TASK_KERNEL")
    if forced:
        if forced not in KERNELS:
            raise UserError(f"DFMLBENCH_TASK_KERNEL={forced!r} is not a kernel: choose one of "
                            f"{', '.join(KERNELS)}, or unset it for the device's default")
        return forced
    if torch.device(device).type == "cpu" and torch.get_num_threads() >= 2:
        return "threads"
    return "loop"


def _workers() -> tuple[ThreadPoolExecutor, int]:
    """The worker pool and its size, made once per process with one worker per intra-op thread."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None:
            _pool_size = max(2, torch.get_num_threads())
            _pool = ThreadPoolExecutor(_pool_size, thread_name_prefix=WORKER_PREFIX)
        return _pool, _pool_size


def task_map(fn: Callable[[Task], Result], tasks: Sequence[Task], device: torch.device | str) -> list[Result]:
    """[fn(task) for task in tasks], computed by `kernel_for(device)`, results in task order.
    The caller's autograd mode holds inside `fn` on every kernel (it is per thread in torch)."""
    tasks = list(tasks)
    nested = threading.current_thread().name.startswith(WORKER_PREFIX)  # a worker never waits on the pool
    if kernel_for(device) == "loop" or len(tasks) < 2 or nested:
        return [fn(task) for task in tasks]
    grad_enabled = torch.is_grad_enabled()
    pool, size = _workers()
    threads_per_task = max(1, torch.get_num_threads() // min(len(tasks), size))

    def run(task: Task) -> Result:
        torch.set_num_threads(threads_per_task)  # per thread in torch: the caller keeps its own
        with torch.set_grad_enabled(grad_enabled):
            return fn(task)
    return list(pool.map(run, tasks))


def task_generators(rng: torch.Generator, count: int) -> list[torch.Generator]:
    """`count` generators seeded from `rng` in task order: task t draws the same numbers
    whichever kernel runs it and whenever it runs."""
    seeds = torch.randint(0, 2**62, (count,), generator=rng).tolist()
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def preferred_layout(device: torch.device | str) -> torch.memory_format:
    """Channels-last on a CPU; contiguous (NCHW) elsewhere, where it is untested here."""
    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


def in_layout(images: torch.Tensor) -> torch.Tensor:
    """4-D images in their device's preferred layout (convolutions keep it downstream)."""
    return images.contiguous(memory_format=preferred_layout(images.device)) if images.dim() == 4 else images


def in_layout_params(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convolution weights in their device's preferred layout too: with channels-last images,
    oneDNN otherwise reorders each NCHW weight (and its gradient) on every call."""
    return {name: in_layout(p) for name, p in params.items()}


class PerThread:
    """One `factory()` result per thread that asks for it: a task that runs a shared module
    through functional_call needs a module of its own (functional_call swaps its attributes)."""

    def __init__(self, factory: Callable[[], Result]) -> None:
        self._factory, self._local = factory, threading.local()

    def get(self) -> Result:
        value = getattr(self._local, "value", None)
        if value is None:
            value = self._local.value = self._factory()
        return value
