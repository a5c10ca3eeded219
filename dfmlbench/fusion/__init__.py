"""Model fusion in weight space without data (OTA, DRO): the channel graph of a backbone, optimal
transport alignment of one model's neurons to another's, and flat parameter vectors."""

from dfmlbench.fusion.alignment import (SOLVERS, align_to_anchor, matching_cost, mean_state,
                                        permute_state, solve_permutation)
from dfmlbench.fusion.graph import ChannelGraph, ChannelSpace, Layer, channel_graph
from dfmlbench.fusion.parameter_space import ParameterSpace

__all__ = ["SOLVERS", "ChannelGraph", "ChannelSpace", "Layer", "ParameterSpace", "align_to_anchor",
           "channel_graph", "matching_cost", "mean_state", "permute_state", "solve_permutation"]
