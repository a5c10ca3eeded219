"""The paper's Time column, measured over a short span and extrapolated to the paper budgets.

    python -m dfmlbench.recovery_time [--sizes 32 84] [--span 3] [--arch conv4] [--device auto] [--out FILE]

Recovery cost does not depend on what the teachers learned, only on their architecture and the
image size, so the teachers here are 100 freshly initialised classifiers (eval mode): Conv4, or
with `--arch mix` Table 4's mixed pool (each teacher's architecture drawn as pool building draws
it, pool seed 0), whose ResNet teachers make every unit dearer.
Each method runs its own recovery code with its paper settings (FREE_5, FREE_2: one epoch =
b=4 teachers x k steps; PURER: one pseudo-data update through 13 teachers; BiDf-MKD: one event
= two 200-step generator trainings on 150 images), timed by the same `ctx.recovery()` clock as a
real run (CUDA-synchronised), then multiplied by the number of units in the paper's budget.
PURER's rare adversarial iterations are not in the span (they add a MAML term).
`--smoke` shrinks every size so the whole script runs in seconds on a CPU (for tests).
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dfmlbench.data.cifar_fs import MEAN as CIFAR_MEAN, STD as CIFAR_STD
from dfmlbench.data.sources import IMAGENET_MEAN, IMAGENET_STD
from dfmlbench.errors import UserError
from dfmlbench.method import RunContext
from dfmlbench.methods import METHODS, create_method
from dfmlbench.models import ARCHITECTURES, build_model
from dfmlbench.paths import write_bytes_atomic
from dfmlbench.pool import MIXED, MIXED_ARCHITECTURES, PoolSpec, Teacher, TeacherPool
from dfmlbench.pool.pretrain import derive_seed, teacher_classes
from dfmlbench.reporting.paper import paper_table

# The paper's Table 2 Time column (hours on one RTX 3090) at each image size: CIFAR-FS at 32 px,
# miniImageNet at 84 px; and those datasets' normalisation.
PAPER_DATASETS = {32: "cifar-fs", 84: "miniimagenet"}
PAPER_HOURS = {size: {method: hours for method in paper_table("table2").values
                      if (hours := paper_table("table2").hours(method, dataset)) is not None}
               for size, dataset in PAPER_DATASETS.items()}
NORMALISATION = {32: (CIFAR_MEAN, CIFAR_STD), 84: (IMAGENET_MEAN, IMAGENET_STD)}
# Per-step sizes for --smoke (the unit counts stay the paper's).
SMOKE = {
    "free": {"ngf": 8, "nz": 16, "images_per_class": 2, "k": 2},
    "purer": {"candidate_teachers": 2, "replay_query": 2},
    "bidf-mkd": {"ngf": 8, "nz": 16, "support_per_class": 2, "query_per_class": 2, "generator_iterations": 2,
                 "kd_inner_steps": 1},
}


def untrained_pool(image_size: int, count: int, device: torch.device, train_classes: int = 64,
                   arch: str = "conv4") -> TeacherPool:
    """`count` freshly initialised teachers of 5 classes each (as the paper's pools), of `arch`
    or, for `mix`, of the architecture a mixed pool of seed 0 gives each index."""
    spec = PoolSpec(arch=arch)
    teachers = []
    for index in range(count):
        generator = torch.Generator().manual_seed(derive_seed("timing-teacher", index))
        arch_of_teacher = spec.arch_of(index)
        model = build_model(arch_of_teacher, 5, image_size, 3, generator=generator).to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        classes = teacher_classes(list(range(train_classes)), 5, 0, index)
        teachers.append(Teacher(index, arch_of_teacher, model, classes, [str(c) for c in classes], 0.0, ""))
    mean, std = NORMALISATION.get(image_size, NORMALISATION[84])
    return TeacherPool(teachers, "untrained", image_size, 3, mean, std, Path("."))


@dataclass
class Measurement:
    method: str
    image_size: int
    unit: str
    seconds_per_unit: float
    paper_units: int

    @property
    def hours(self) -> float:
        return self.seconds_per_unit * self.paper_units / 3600


def _context(method: Any, pool: TeacherPool, device: torch.device, folder: Path) -> RunContext:
    return RunContext(device, 0, method.settings, "conv4", pool.image_size, 3, 5, 1, folder)


def measure(name: str, pool: TeacherPool, span: int, device: torch.device, smoke: bool) -> Measurement:
    """Run `span` recovery units of one method (after one untimed warm-up unit)."""
    method = create_method(name, SMOKE.get(method_base(name), {}) if smoke else {})
    with tempfile.TemporaryDirectory() as folder:
        ctx = _context(method, pool, device, Path(folder))
        unit = method.recovery_unit(pool, ctx)
        if unit is None:
            raise UserError(f"{name} recovers no data, so it has no Time column; "
                            f"choose among {', '.join(recovering_methods())}")
        unit.run()  # warm-up: allocator, kernels, cuDNN autotuning
        ctx.recovery_clock.seconds = 0.0
        for _ in range(span):
            unit.run()
        return Measurement(name, pool.image_size, unit.name, ctx.recovery_clock.seconds / span, unit.count)


def method_base(name: str) -> str:
    return METHODS.get(name).load().name


def recovering_methods() -> list[str]:
    """The registered methods that declare a recovery unit (FREE and its variants, PURER, BiDf-MKD)."""
    from dfmlbench.method import Method
    return [e.name for e in METHODS if e.load().recovery_unit is not Method.recovery_unit]


def report(measurements: list[Measurement], device: torch.device, arch: str = "conv4") -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    teachers = paper_note = ""  # Conv4: the paper's Table 2 pools, whose hours the paper column holds
    if arch != "conv4":
        kind = f"Table 4's mixed teachers ({', '.join(MIXED_ARCHITECTURES)})" if arch == MIXED else f"{arch} teachers"
        teachers, paper_note = f" with {kind}", " with Conv4 teachers"
    rows = [f"Recovery time extrapolated to the paper budgets, measured on {name} "
            f"(torch {torch.__version__}){teachers}; paper: one RTX 3090{paper_note}.", "",
            "| method | px | seconds / unit | units at paper budget | hours | paper hours | x FREE_5 | paper x FREE_5 |",
            "|---|---|---|---|---|---|---|---|"]
    for m in measurements:
        free = next((f for f in measurements if f.method == "free" and f.image_size == m.image_size), None)
        paper = PAPER_HOURS.get(m.image_size, {})
        ratio = f"{m.hours / free.hours:.1f}" if free and free.hours else "-"
        paper_ratio = (f"{paper[m.method] / paper['free']:.1f}" if m.method in paper and "free" in paper else "-")
        rows.append(f"| {m.method} | {m.image_size} | {m.seconds_per_unit:.3f} per {m.unit} | {m.paper_units} | "
                    f"{m.hours:.3f} | {paper.get(m.method, '-')} | {ratio} | {paper_ratio} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from dfmlbench.cli import _Parser  # one-line errors, as every dfmlbench command
    from dfmlbench.runner import resolve_device

    parser = _Parser(prog="dfmlbench.recovery_time", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 84])
    parser.add_argument("--methods", nargs="+", default=["free", "free-2", "purer", "bidf-mkd"],
                        choices=recovering_methods())
    parser.add_argument("--span", type=int, default=3, help="timed units per method (after one warm-up)")
    parser.add_argument("--arch", default="conv4", choices=[*ARCHITECTURES, MIXED],
                        help="the teachers' architecture; mix: Table 4's mixed pool")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    try:
        args = parser.parse_args(argv)
        if args.span < 1 or any(size < 16 or size % 4 for size in args.sizes):
            raise UserError("--span must be >= 1 and every size a multiple of 4, at least 16 "
                            "(e.g. --span 3 --sizes 32 84)")
        device = resolve_device(args.device)
    except UserError as exc:
        print(f"dfmlbench: error: {exc}", file=sys.stderr)
        return 2
    measurements = []
    for size in args.sizes:
        pool = untrained_pool(size, 100, device, arch=args.arch)
        for name in args.methods:
            measurements.append(measure(name, pool, args.span, device, args.smoke))
            print(f"measured {name} at {size} px", file=sys.stderr, flush=True)
    table = report(measurements, device, args.arch)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(args.out, (table + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
