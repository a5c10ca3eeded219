"""Fix glyphs-paper's rendering difficulty by the rule stated in docs/teacher-regime.md.

    python -m dfmlbench.glyphs_calibration --out reports/glyphs-paper-calibration [--seed 0] [--all]

Rung by rung up the ladder (smallest difficulty first): ten teachers by the paper's protocol
(the first ten of every glyphs-paper pool, cached like any pool) and Random on the fixed
600 test episodes (the `glyphs-calibration` suite). The chosen difficulty is the smallest
rung whose teachers' mean held-out accuracy lies in [60, 90]% and where Random scores at
most 55%; the search stops there unless `--all`. No DFML method runs: none may inform the choice.

Each measured rung is kept as `rungs/d<difficulty>.json` (a killed search resumes at the next
rung; the Random records are under `records/`); `calibration.md` and `calibration.json` are
rebuilt from the rung files alone, so they regenerate byte for byte (`--report-only`).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

from dfmlbench.errors import UserError
from dfmlbench.paths import write_bytes_atomic
from dfmlbench.pool.regime import show

LADDER = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
TEACHER_RANGE = (60.0, 90.0)  # the teachers' mean held-out accuracy, in %
RANDOM_CEILING = 55.0  # Random's meta-test accuracy, in %
SUITE = "glyphs-calibration"
DATASET = "glyphs-paper"


def rung_name(difficulty: float) -> str:
    return f"d{difficulty:g}"


def passes(rung: dict[str, Any]) -> bool:
    low, high = TEACHER_RANGE
    return low <= rung["teachers"]["heldout_mean"] <= high and rung["random"]["mean"] <= RANDOM_CEILING


def measure_rung(difficulty: float, seed: int, profile: str, records: Path) -> dict[str, Any]:
    """Build (or load) the rung's teachers and run (or read) its Random cell."""
    from dfmlbench.config import load_suite, resolve
    from dfmlbench.data import cell_dataset
    from dfmlbench.planning import expand_cells
    from dfmlbench.pool import PoolSpec, obtain_pool
    from dfmlbench.pool.store import read_manifest
    from dfmlbench.runner import resolve_device, run_cells

    config = resolve(load_suite(SUITE), profile, [(f"dataset_settings.{DATASET}.difficulty", difficulty),
                                                 (f"dataset_settings.{DATASET}.seed", seed)])
    (cell,) = expand_cells(config)
    dataset = cell_dataset(cell.config)
    pool = obtain_pool(dataset, PoolSpec.from_config(config["pool"]), resolve_device(config["runtime"]["device"]))
    (outcome,) = run_cells([cell], records, show_progress=False)
    if outcome.status not in ("ran", "recorded"):
        raise RuntimeError(f"Random on {rung_name(difficulty)} did not finish: {outcome.path}")
    heldout = [round(t.heldout_acc, 2) for t in pool]  # in %
    entries = read_manifest(pool.path, dataset)["teachers"][:len(heldout)]
    regime = pool.metadata["regime"]
    accuracy = outcome.record["accuracy"]
    return {
        "difficulty": difficulty, "render_seed": seed, "profile": profile,
        "dataset_fingerprint": dataset.fingerprint(), "pool_key": pool.key,
        "teachers": {"count": len(heldout), "heldout": heldout, "heldout_mean": round(statistics.fmean(heldout), 2),
                     "heldout_min": min(heldout), "heldout_max": max(heldout),
                     # pre-training time on this machine (the first build; a cached pool keeps it)
                     "train_seconds": round(sum(e["train_seconds"] for e in entries), 1)},
        "regime": {"steps_mean": regime["steps"]["mean"] if regime.get("steps") else None,
                   "norm_ratio_mean": regime["norm_ratio_mean"],
                   "pairwise_cosine_mean": regime["pairwise_cosine_mean"]},
        "random": {"mean": round(accuracy["mean"], 2), "ci95": round(accuracy["ci95"], 2),
                   "episodes": outcome.record["test_episodes"],
                   "record": str(outcome.path.relative_to(records))},
    }


def choose(rungs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The smallest measured rung that passes, provided every smaller rung was measured."""
    by_difficulty = {r["difficulty"]: r for r in rungs}
    for difficulty in LADDER:
        rung = by_difficulty.get(difficulty)
        if rung is None:
            return None  # a gap: the rule cannot be applied yet
        if passes(rung):
            return rung
    return None


def report(rungs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """calibration.md and calibration.json from the measured rungs."""
    rungs = sorted(rungs, key=lambda r: r["difficulty"])
    chosen = choose(rungs)
    low, high = TEACHER_RANGE
    lines = [
        "# glyphs-paper: the difficulty, fixed by the rule of docs/teacher-regime.md",
        "",
        "Made by `python -m dfmlbench.glyphs_calibration`; no DFML method ran on any rung.",
        f"Rule: the smallest difficulty of {', '.join(f'{d:g}' for d in LADDER)} at which the teachers' mean "
        f"held-out accuracy lies in [{low:g}, {high:g}]% and Random scores at most {RANDOM_CEILING:g}% "
        "(5-way 1-shot, 600 episodes, lr 0.01, 10 steps).",
        "",
        "| difficulty | render seed | teachers | held-out mean (min-max) | Random | optimiser steps | "
        "norm / init | pairwise cosine | pre-training (min) | passes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rungs:
        t, g = r["teachers"], r["regime"]
        lines.append(f"| {r['difficulty']:g} | {r['render_seed']} | {t['count']} | {t['heldout_mean']:.2f} "
                     f"({t['heldout_min']:.2f}-{t['heldout_max']:.2f}) | {r['random']['mean']:.2f} ± "
                     f"{r['random']['ci95']:.2f} | {show(g['steps_mean'], '.0f')} | {show(g['norm_ratio_mean'], '.3f')} "
                     f"| {show(g['pairwise_cosine_mean'], '.4f')} | {t['train_seconds'] / 60:.1f} "
                     f"| {'yes' if passes(r) else 'no'} |")
    lines.append("")
    if chosen is not None:
        lines.append(f"Chosen: difficulty {chosen['difficulty']:g} (`dfmlbench/data/glyphs_dataset.py`, "
                     "PAPER_DIFFICULTY). Rungs above it were not needed by the rule"
                     + (" but were measured." if rungs[-1]["difficulty"] > chosen["difficulty"] else "."))
    elif rungs and all(d in {r["difficulty"] for r in rungs} for d in LADDER):
        lines.append("No rung passes: by docs/teacher-regime.md the variant is not made.")
    else:
        lines.append("Not decided yet: the next rung of the ladder has not been measured.")
    summary = {"rule": {"ladder": list(LADDER), "teacher_range": list(TEACHER_RANGE), "random_ceiling": RANDOM_CEILING},
               "chosen_difficulty": None if chosen is None else chosen["difficulty"], "rungs": rungs}
    return "\n".join(lines) + "\n", summary


def read_rungs(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "rungs").glob("d*.json"))]


def write_report(out: Path) -> dict[str, Any]:
    text, summary = report(read_rungs(out))
    write_bytes_atomic(out / "calibration.md", text.encode())
    write_bytes_atomic(out / "calibration.json", (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode())
    return summary


def calibrate(out: Path, seed: int, profile: str, every_rung: bool) -> dict[str, Any]:
    """Measure rungs from the smallest until the rule picks one (all of them with `every_rung`)."""
    out.mkdir(parents=True, exist_ok=True)
    for difficulty in LADDER:
        path = out / "rungs" / f"{rung_name(difficulty)}.json"
        if path.is_file():
            rung = json.loads(path.read_text(encoding="utf-8"))
            if rung["render_seed"] != seed or rung["profile"] != profile:
                raise UserError(f"{path} was measured with render seed {rung['render_seed']}, profile "
                                f"{rung['profile']}; use another --out for seed {seed}, profile {profile}")
        else:
            print(f"rung {rung_name(difficulty)}: ten teachers and Random ...", flush=True)
            rung = measure_rung(difficulty, seed, profile, out / "records")
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, (json.dumps(rung, indent=1, sort_keys=True) + "\n").encode())
        print(f"rung {rung_name(difficulty)}: teachers {rung['teachers']['heldout_mean']:.2f}%, "
              f"Random {rung['random']['mean']:.2f}%: {'passes' if passes(rung) else 'fails'}", flush=True)
        if passes(rung) and not every_rung:
            break
    return write_report(out)


def main(argv: Sequence[str] | None = None) -> int:
    from dfmlbench.cli import _Parser  # one-line errors, as every dfmlbench command

    parser = _Parser(prog="dfmlbench.glyphs_calibration", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the rungs, records and report")
    parser.add_argument("--seed", type=int, default=0, help="the render seed (default 0)")
    parser.add_argument("--profile", choices=("paper", "smoke"), default="paper",
                        help="smoke: seconds, for tests (default: paper, the rule's own setting)")
    parser.add_argument("--all", action="store_true", help="measure every rung, not only up to the chosen one")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the rung files")
    try:
        args = parser.parse_args(argv)
        if args.seed < 0:
            raise UserError(f"--seed {args.seed} is not allowed: the render seed must be >= 0")
        summary = write_report(args.out) if args.report_only else calibrate(args.out, args.seed, args.profile, args.all)
    except UserError as exc:
        print(f"dfmlbench: error: {exc}", file=sys.stderr)
        return 2
    chosen = summary["chosen_difficulty"]
    print(f"chosen difficulty: {chosen:g}" if chosen is not None else "no difficulty chosen yet",
          f"({args.out / 'calibration.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
