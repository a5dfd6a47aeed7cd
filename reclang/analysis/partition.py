"""The time partition: which values depend on no input (computed once), which depend
on inputs but on no state (computed for all time steps at once, before the loop),
and which depend on the state (the recurrence itself)."""

from __future__ import annotations

from enum import IntEnum

import networkx as nx

from ..ir import IR, Op


class Phase(IntEnum):
    CONST = 0    # params, hyperparameters, indices: the same at every step
    PRELUDE = 1  # depends on inputs, not on any state
    CORE = 2     # depends on a state


def phases(ir: IR) -> dict[int, Phase]:
    """The phase of every node: the latest phase among what it reads."""
    result: dict[int, Phase] = {}
    for i in nx.topological_sort(ir.graph):
        node = ir.node(i)
        if node.op == Op.STATE:
            result[i] = Phase.CORE
        elif node.op == Op.INPUT:
            result[i] = Phase.PRELUDE
        elif node.op == Op.UPDATE:
            # a new state is per sequence even when it is computed from params alone
            result[i] = max(result[node.args[0]], Phase.PRELUDE)
        else:
            result[i] = max((result[a] for a in node.args), default=Phase.CONST)
    return result
