"""The IR graph: SSA ordering, shapes, phases, dot output."""

import networkx as nx

import reclang
from reclang.analysis.partition import Phase, phases
from reclang.ir import Op

DELTA = """
cell delta(H = 2, K = 3, V = 4):
    input q[H, K], k[H, K], v[H, V], beta[H]
    state S[H, K, V] = 0
    u[h, j] = v[h, j] - sum(i: k[h, i] * S[h, i, j])
    S[h, i, j] <- S[h, i, j] + beta[h] * k[h, i] * u[h, j]
    out o[h, j] = sum(i: q[h, i] * S[h, i, j])
"""


def ir_of(text):
    return reclang.loads(text).ir


def reads_of(ir, stmt_name):
    """The sources (by op) that a statement's READ nodes refer to."""
    root = next(i for i in ir.stmts if ir.node(i).arg == stmt_name)
    nodes = nx.ancestors(ir.graph, root) & {i for i in ir.graph if ir.node(i).stmt ==
                                            ir.node(root).stmt}
    return {(ir.node(ir.node(n).args[0]).op, ir.node(ir.node(n).args[0]).arg)
            for n in nodes if ir.node(n).op == Op.READ}


def test_reads_before_an_update_see_the_previous_state_and_after_see_the_new():
    ir = ir_of(DELTA)
    assert (Op.STATE, "S") in reads_of(ir, "u")
    assert (Op.STATE, "S") in reads_of(ir, "S")  # the update reads the previous S
    assert (Op.UPDATE, "S") in reads_of(ir, "o") and (Op.STATE, "S") not in reads_of(ir, "o")


def test_graph_is_a_dag_with_shapes():
    ir = ir_of(DELTA)
    assert nx.is_directed_acyclic_graph(ir.graph)
    o = ir.outputs[0]
    assert o.axes == ("h", "j") and o.sizes == (2, 4)
    assert [d.name for d in ir.inputs] == ["q", "k", "v", "beta"]
    assert ir.decls["S"].shape == (2, 3, 4)


def test_phases():
    text = """
cell p(D = 2):
    input x[D]
    param W[D, D] ~ normal(0, 1)
    state h[D] = 0
    w2[a, b] = W[a, b] * 2
    z[d] = sum(e: w2[d, e] * x[e])
    h[d] <- h[d] * z[d]
    out y[d] = h[d]
"""
    ir = ir_of(text)
    phase = phases(ir)
    by_name = {ir.node(i).arg: phase[i] for i in ir.stmts}
    assert by_name == {"w2": Phase.CONST, "z": Phase.PRELUDE, "h": Phase.CORE, "y": Phase.CORE}


def test_constants_are_folded_and_named_constants_inlined():
    ir = ir_of("cell c(K = 16):\n    input x[K]\n    scale = K ** -0.5\n"
               "    out y[i] = x[i] * scale * 2\n")
    consts = [ir.node(i).arg for i in ir.graph if ir.node(i).op == Op.CONST]
    assert 0.25 in consts


def test_dot_output():
    dot = ir_of(DELTA).to_dot()
    assert dot.startswith('digraph "delta"') and "->" in dot and dot.rstrip().endswith("}")


def test_summary_lists_every_node():
    ir = ir_of(DELTA)
    assert len(ir.summary().splitlines()) == ir.graph.number_of_nodes()
