"""The teacher pools a report's records used, with their regime (issue 17): how well and how
far the teachers trained, so a reader knows which regime a table was measured in."""

from __future__ import annotations

from typing import Any, Iterable

from dfmlbench.pool.regime import show

HEADER = ["| dataset | pool | weights kept | teachers | held-out accuracy | optimiser steps (min-max) | norm / init | "
          "pairwise cosine |", "|---|---|---|---|---|---|---|---|"]


def pool_rows(records: Iterable[dict[str, Any]]) -> list[str]:
    """One markdown row per pool (key and size: a smaller pool is a prefix of a bigger one, with
    its own regime), the regime from any record of it that carries one; [] when no record used
    teachers."""
    pools: dict[tuple[str, int], tuple[str, dict[str, Any]]] = {}
    regimes: dict[tuple[str, int], dict[str, Any]] = {}
    for record in records:
        pool = record.get("pool")
        if not pool:
            continue
        kept = f"{record['config']['pool']['select']} epoch"
        which = (pool["key"], pool["num_teachers"])
        pools.setdefault(which, (record["dataset"], {**pool, "kept": kept}))
        if pool.get("regime"):
            regimes.setdefault(which, pool["regime"])
    rows = []
    for which, (dataset, pool) in sorted(pools.items(), key=lambda item: (item[1][0], *item[0])):
        key, regime = which[0], regimes.get(which)
        held = f"{pool['mean_heldout_acc']:.1f}%"
        if regime is None:
            rows.append(f"| {dataset} | `{key}` | {pool['kept']} | {pool['num_teachers']} | {held} | not recorded (records older "
                        "than the indicators; `pool show` prints them) | – | – |")
        elif "teachers" in regime:
            rows.append(f"| {dataset} | `{key}` | {pool['kept']} | {pool['num_teachers']} | {held} | {_shape(regime)} |")
        else:  # a multi-domain pool: one summary per domain (the accuracy is the whole pool's)
            rows += [f"| {dataset}: {domain} | `{key}` | {pool['kept']} | {summary['teachers']} | {held} (all domains) | "
                     f"{_shape(summary)} |" for domain, summary in regime.items() if summary]
    return [*HEADER, *rows] if rows else []


def _shape(summary: dict[str, Any]) -> str:
    steps = summary.get("steps")
    return ((f"{steps['mean']:.0f} ({steps['min']:.0f}-{steps['max']:.0f})" if steps else "–")
            + f" | {show(summary.get('norm_ratio_mean'), '.3f')} | {show(summary.get('pairwise_cosine_mean'), '.4f')}")


CAPTION = ("Held-out accuracy: the teachers' mean on their own classes' held-out images. Norm / init: "
           "a layer's kept weights over its init (re-derived from the pool seed), averaged over conv and "
           "linear layers and teachers; pairwise cosine: between two teachers' flattened layers, averaged "
           "over pairs and layers (docs/teacher-regime.md). Tens of steps and a norm near 1: the teachers "
           "stayed near their random inits; hundreds of steps and a norm several times the init: the paper's "
           "regime. The cosine is near 0 in both (independent inits stay uncorrelated).")

__all__ = ["CAPTION", "pool_rows"]
