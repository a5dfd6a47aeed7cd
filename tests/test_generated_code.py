"""Generated code a person would write: in every catalogue cell's source on every
backend that runs it, each assigned name is read, each import is used, and each
@triton.jit function is called (a pyflakes-style check with the stdlib `ast`)."""

from __future__ import annotations

import ast

import pytest
import torch
from helpers import catalogue_sources

import reclang



def _loads(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _bound(scope: ast.AST) -> dict[str, int]:
    """The names a scope binds (assignments, imports, functions, classes), with their line;
    nested functions bind their own."""
    found: dict[str, int] = {}
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found.setdefault(node.name, node.lineno)
            continue
        if isinstance(node, ast.Lambda):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.setdefault(node.id, node.lineno)
        elif isinstance(node, ast.alias):
            found.setdefault((node.asname or node.name).split(".")[0], node.lineno)
        stack.extend(ast.iter_child_nodes(node))
    return found


def unused(source: str) -> list[str]:
    """`scope:line: name` for every name bound and never read in its scope (nested scopes
    included); forward and step are the module's API, `_` is a placeholder, and classes
    are read by attribute (their own names count)."""
    tree = ast.parse(source)
    scopes = [tree] + [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    found = []
    for scope in scopes:
        read = _loads(scope)
        for name, line in _bound(scope).items():
            if name in read or name == "_" or (scope is tree and name in ("forward", "step")):
                continue
            found.append(f"{getattr(scope, 'name', '<module>')}:{line}: {name}")
    return sorted(found)


def test_the_check_finds_what_it_looks_for():
    source = ("import os\n\ndef forward(x):\n    y = x + 1\n    _, z = x, 2\n    return x\n\n"
              "def step(x):\n    return x\n")
    assert unused(source) == ["<module>:1: os", "forward:4: y", "forward:5: z"]
    assert unused("def forward(x):\n    def inner(y):\n        return x\n    return inner\n") \
        == []


@pytest.mark.parametrize("key", sorted(catalogue_sources()), ids="-".join)
def test_every_name_bound_is_read(key):
    assert unused(catalogue_sources()[key]) == []


def jit_functions(source: str) -> list[str]:
    return [n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)
            and any("jit" in ast.unparse(d) for d in n.decorator_list)]


@pytest.mark.parametrize("key", sorted(k for k in catalogue_sources() if k[1] == "triton"),
                         ids="-".join)
def test_every_triton_kernel_is_called(key):
    """Kernels are chosen when the file is rendered (from the plan and the schedule):
    a file holds none that it does not call."""
    source = catalogue_sources()[key]
    tree = ast.parse(source)
    called = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            called |= _loads(node) - {node.name} if isinstance(node, ast.FunctionDef) else \
                _loads(node)
    assert [f for f in jit_functions(source) if f not in called] == []


NAMED = """cell named(H = 2, K = 16):
    input q[H, K], k[H, K]
    state S[H, K] = 0
    scale = K ** -0.5
    S[h, i] <- exp(-k[h, i] ** 2) * S[h, i] + k[h, i]
    out o[h, i] = scale * q[h, i] * S[h, i] + q[h, i] * K ** -0.5 / 2
"""


@pytest.mark.parametrize("backend", ["sequential", "scan"])
def test_a_constant_the_spec_computes_is_named_once(backend):
    """`scale = K ** -0.5` prints as `scale = 0.25  # K ** -0.5, line 4`, read by
    name; an unnamed `K ** -0.5` gets a name from its operation and operand."""
    cell = reclang.loads(NAMED)
    source = cell.source(backend)
    forward = source[source.index("def forward"):source.index("def step")]
    assert forward.count("scale = 0.25  # K ** -0.5, line 4") == 1
    assert forward.count("_pow_K = 0.25  # K ** -0.5, line 6") == 1
    assert "0.25 *" not in forward and "* 0.25" not in forward
    assert "_pow_K / 2" in forward  # q * K ** -0.5 / 2: the 2 divides the product
    x = {"q": torch.randn(2, 5, 2, 16), "k": torch.randn(2, 5, 2, 16)}
    y, _ = cell.module(backend)(**x)
    y_ref, _ = cell.module("sequential")(**x)
    torch.testing.assert_close(y, y_ref)
