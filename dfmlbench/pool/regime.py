"""The teacher regime: how far a pool's teachers moved from their random inits, how alike they
are, and how long they trained (issue 17).

Teachers that barely leave their init (a few dozen optimiser steps on 80 images) make a weight
Average that is in effect a random network at a small scale; the paper's teachers (about 1,100
steps on 2,400 images) do not. Three indicators tell the regimes apart:

- `norm_ratio`: per teacher and layer, ||final weights|| / ||initial weights||; the init is
  re-derived from the teacher's seed, exactly as pre-training drew it;
- `pairwise_cosine`: per layer, the mean cosine between two teachers' flattened weights, over
  all pairs of teachers of one architecture (independent inits give about 0);
- `steps`: the optimiser steps that produced the kept weights (to the best epoch for
  `select: best`, all epochs for `final`).

Only conv and linear weights count as layers (tensors of two or more dimensions): BN scales
start at 1 and biases at 0, so their ratio to init says nothing about training."""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable

import torch

from dfmlbench.models import build_model
from dfmlbench.pool.pretrain import derive_seed

REGIME_FIELD = "regime"  # the per-teacher entry in a pool manifest


def layer_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The conv and linear weight tensors of a state dict, by name, in state order."""
    return {name: t.detach().float() for name, t in state.items() if name.endswith("weight") and t.dim() >= 2}


def initial_state(arch: str, num_classes: int, image_size: int, in_channels: int,
                  pool_seed: int, index: int) -> dict[str, torch.Tensor]:
    """Teacher `index`'s weights before training: the draw `pretrain_teacher` makes first from
    its generator (seeded by ("teacher", pool seed, index))."""
    generator = torch.Generator().manual_seed(derive_seed("teacher", pool_seed, index))
    return build_model(arch, num_classes, image_size, in_channels, generator=generator).state_dict()


def steps_taken(train_images: int, batch_size: int, epochs: int, best_epoch: int | None, select: str) -> int:
    """Optimiser steps to the kept weights: one per batch, every epoch up to the kept one."""
    per_epoch = math.ceil(train_images / batch_size)
    kept_epochs = best_epoch + 1 if select == "best" and best_epoch is not None and best_epoch >= 0 else epochs
    return per_epoch * kept_epochs


def teacher_regime(final: dict[str, torch.Tensor], initial: dict[str, torch.Tensor] | None,
                   steps: int | None) -> dict[str, Any]:
    """One teacher's manifest entry: per-layer norm ratios (None without a known init) and steps."""
    ratios = None
    if initial is not None:
        start = layer_weights(initial)
        ratios = {name: round(float(w.norm() / start[name].norm()), 4) for name, w in layer_weights(final).items()
                  if name in start and start[name].shape == w.shape and float(start[name].norm()) > 0}
    return {"norm_ratio": ratios, "steps": steps}


def pairwise_cosine(states: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Per layer, the mean cosine between the flattened weights of every pair of teachers that
    have that layer at the same shape (an empty dict with fewer than two teachers)."""
    by_layer: dict[str, list[torch.Tensor]] = {}
    for state in states:
        for name, w in layer_weights(state).items():
            by_layer.setdefault(name, []).append(w.flatten())
    means = {}
    for name, flats in by_layer.items():
        shapes = {f.shape for f in flats}
        if len(flats) < 2 or len(shapes) != 1:
            continue
        unit = torch.nn.functional.normalize(torch.stack(flats).double(), dim=1)
        gram = unit @ unit.T
        n = len(flats)
        means[name] = round(float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1))), 4)
    return means


def _spread(values: Iterable[float]) -> dict[str, float] | None:
    values = list(values)
    if not values:
        return None
    return {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def pool_regime(entries: list[dict[str, Any]], states: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """The pool-level summary a record carries: per-layer norm ratios over teachers (mean, min,
    max), per-layer pairwise cosines, and steps; plus one mean of each over layers."""
    regimes = [entry.get(REGIME_FIELD) or {} for entry in entries]
    layers = list(dict.fromkeys(name for r in regimes for name in (r.get("norm_ratio") or {})))
    ratio = {name: _spread(r["norm_ratio"][name] for r in regimes if name in (r.get("norm_ratio") or {}))
             for name in layers}
    cosine = pairwise_cosine(states)
    steps = _spread(r["steps"] for r in regimes if r.get("steps") is not None)
    return {
        "teachers": len(entries),
        "norm_ratio_mean": round(statistics.fmean(s["mean"] for s in ratio.values()), 4) if ratio else None,
        "pairwise_cosine_mean": round(statistics.fmean(cosine.values()), 4) if cosine else None,
        "steps": steps,
        "norm_ratio": ratio,
        "pairwise_cosine": cosine,
    }


def describe(summary: dict[str, Any]) -> list[str]:
    """The summary as lines for a terminal: one headline, then one line per layer."""
    steps = summary.get("steps")
    head = (f"{summary['teachers']} teacher(s): weight norm / init norm {show(summary['norm_ratio_mean'])} "
            f"(mean over layers), pairwise cosine {show(summary['pairwise_cosine_mean'])}, optimiser steps "
            + (f"{steps['mean']:.0f} (min {steps['min']:.0f}, max {steps['max']:.0f})" if steps else "unknown"))
    lines = [head, "| layer | norm / init (mean, min-max) | pairwise cosine |", "|---|---|---|"]
    names = list(dict.fromkeys([*summary["norm_ratio"], *summary["pairwise_cosine"]]))
    for name in names:
        r = summary["norm_ratio"].get(name)
        spread = f"{r['mean']:.3f} ({r['min']:.3f}-{r['max']:.3f})" if r else "–"
        lines.append(f"| {name} | {spread} | {show(summary['pairwise_cosine'].get(name))} |")
    return lines


def show(value: float | None, spec: str = ".3f") -> str:
    """An indicator for a table: "–" where it is unknown."""
    return "–" if value is None else format(value, spec)


__all__ = ["REGIME_FIELD", "describe", "initial_state", "layer_weights", "pairwise_cosine", "pool_regime",
           "show", "steps_taken", "teacher_regime"]
