"""Align a model's neurons to an anchor's with optimal transport (Singh & Jaggi, "wts" mode;
baselines.md §2.4), then average aligned models.

Neurons are compared by their incoming weights after the previous spaces' permutations have
been applied to the input axis ("past correction"), so layer l is matched in the anchor's basis.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from dfmlbench.errors import UserError
from dfmlbench.fusion.graph import ChannelGraph

State = dict[str, torch.Tensor]
SOLVERS = ("emd", "assignment")
COSTS = ("weights", "weights+bn")


def permute_input(weight: torch.Tensor, perm: torch.Tensor, width: int) -> torch.Tensor:
    """Reorder dim 1 of a conv weight, or of a linear weight over a flattened (C, H*W) map."""
    return weight.reshape(weight.shape[0], width, -1)[:, perm].reshape(weight.shape)


def permute_state(state: State, graph: ChannelGraph, perms: dict[str, torch.Tensor]) -> State:
    """The state of the same function with channel j of each space taken from channel perms[space][j]."""
    out = dict(state)
    for space in graph.spaces:
        perm = perms[space.name]
        for layer in space.layers:
            for key in (layer.weight, *layer.affine, *layer.statistics):
                out[key] = out[key][perm]
        for key in graph.readers(space.name):
            out[key] = permute_input(out[key], perm, space.width)
    return out


def matching_cost(state: State, anchor: State, graph: ChannelGraph, space_name: str,
                  perms: dict[str, torch.Tensor], cost: str = "weights") -> torch.Tensor:
    """Euclidean (not squared) distances between the model's neurons (rows) and the anchor's.

    A layer whose input space is not aligned yet (a residual branch of a later block) cannot be
    compared weight by weight; it contributes only its per-channel affine entries, if asked.
    """
    space = graph.space(space_name)
    mine, theirs = [], []
    for layer in space.layers:
        if layer.source is None or layer.source in perms:
            weight = state[layer.weight]
            if layer.source is not None:
                source = graph.space(layer.source)
                weight = permute_input(weight, perms[layer.source], source.width)
            mine.append(weight.reshape(space.width, -1))
            theirs.append(anchor[layer.weight].reshape(space.width, -1))
        if cost == "weights+bn":
            mine += [state[k].reshape(space.width, 1) for k in layer.affine]
            theirs += [anchor[k].reshape(space.width, 1) for k in layer.affine]
    a = torch.cat(mine, 1).detach().cpu().double()
    b = torch.cat(theirs, 1).detach().cpu().double()
    return torch.cdist(a, b)


def solve_permutation(cost: torch.Tensor | np.ndarray, solver: str = "emd") -> np.ndarray:
    """perm[j] = the model neuron transported to anchor neuron j, for equal widths.

    `emd`: exact OT with uniform marginals (POT), then the otfusion correction (divide each
    column by its target marginal 1/n), which leaves a permutation matrix. `assignment`: the
    same optimum found as a linear assignment (scipy).
    """
    cost = np.ascontiguousarray(np.asarray(cost, dtype=np.float64))
    n = cost.shape[0]
    if cost.shape != (n, n):
        raise ValueError(f"alignment needs equal widths, got a cost of shape {cost.shape}")
    if solver == "assignment":
        from scipy.optimize import linear_sum_assignment
        rows, cols = linear_sum_assignment(cost)
        perm = np.empty(n, dtype=np.int64)
        perm[cols] = rows
        return perm
    if solver == "emd":
        import ot
        marginal = np.full(n, 1.0 / n)
        plan = ot.emd(marginal, marginal, cost) / marginal[None, :]
        perm = plan.argmax(0)
        # Exact EMD returns a vertex of the transport polytope: with uniform equal marginals,
        # a permutation (Birkhoff). Anything else means the solver did not converge.
        if not np.allclose(plan[perm, np.arange(n)], 1.0, atol=1e-6) or len(set(perm.tolist())) != n:
            raise RuntimeError("exact EMD did not return a permutation plan")
        return perm.astype(np.int64)
    raise UserError(f"alignment solver must be one of {', '.join(SOLVERS)}, got '{solver}'")


def align_to_anchor(state: State, anchor: State, graph: ChannelGraph, solver: str = "emd",
                    cost: str = "weights") -> tuple[State, dict[str, torch.Tensor]]:
    """The model's state permuted into the anchor's channel order, and each space's permutation."""
    if cost not in COSTS:
        raise UserError(f"alignment cost must be one of {', '.join(COSTS)}, got '{cost}'")
    perms: dict[str, torch.Tensor] = {}
    for space in graph.spaces:  # in order: a space's inputs are aligned before it is matched
        matrix = matching_cost(state, anchor, graph, space.name, perms, cost)
        perms[space.name] = torch.from_numpy(solve_permutation(matrix, solver))
    return permute_state(state, graph, perms), perms


def mean_state(states: Sequence[State], weights: Sequence[float] | None = None) -> State:
    """Weighted mean of every entry (uniform when `weights` is None), computed in float64."""
    w = torch.ones(len(states), dtype=torch.float64) if weights is None else torch.tensor(weights, dtype=torch.float64)
    if w.numel() != len(states) or not torch.all(w >= 0) or w.sum() <= 0:
        raise ValueError("mean_state needs one non-negative weight per state, not all zero")
    w = w / w.sum()
    return {name: torch.einsum("k,k...->...", w, torch.stack([s[name].double() for s in states]))
                  .to(states[0][name].dtype)
            for name in states[0]}
