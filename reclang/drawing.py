"""`reclang graph`: the IR as a Graphviz picture that a person can read.

Each statement is a box labelled with its spec line, inside a cluster for its phase of
the plan's partition (const, prelude, core, epilogue); reads are folded into the edges
(labelled with their subscripts); nodes show their op and shape (`[d=64, n=16]`);
states and their updates are filled, and a dashed edge closes each recurrence (the
update is the next step's state). `render` writes dot text, or runs Graphviz's `dot`
for .svg, .png and .pdf.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .errors import RecError, Source
from .ir import Op

PHASES = {"const": "grey96", "prelude": "aliceblue", "core": "mistyrose",
          "epilogue": "honeydew"}
STATE_COLOR = "gold"
SHAPES = {Op.INPUT: "invhouse", Op.PARAM: "box", Op.STATE: "doubleoctagon",
          Op.UPDATE: "doubleoctagon", Op.OUT: "house", Op.LET: "box", Op.CONST: "plaintext"}
FORMATS = (".svg", ".png", ".pdf")


def _quote(text: str) -> str:
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + text + '"'


def _shape(node) -> str:
    return "[" + ", ".join(f"{a}={s}" for a, s in zip(node.axes, node.sizes)) + "]"


def _label(ir, node) -> str:
    if node.op in (Op.INPUT, Op.PARAM, Op.STATE):
        sizes = ", ".join(map(str, ir.decls[node.arg].shape))
        return f"{node.op.name.lower()} {node.arg}\n[{sizes}]"
    if node.op == Op.UPDATE:
        return f"{node.arg}' (new {node.arg})\n{_shape(node)}"
    if node.op in (Op.LET, Op.OUT):
        return f"{'out ' if node.op == Op.OUT else ''}{node.arg}\n{_shape(node)}"
    if node.op == Op.REDUCE:
        kind, axes = node.arg
        return f"{kind} over {', '.join(axes)}\n{_shape(node)}"
    if node.op == Op.CONST:
        return f"{node.arg:g}" if isinstance(node.arg, float) else str(node.arg)
    if node.op == Op.INDEX:
        return f"index {node.arg}\n{_shape(node)}"
    return f"{node.arg}\n{_shape(node)}"


def _style(node) -> str:
    shape = SHAPES.get(node.op, "ellipse")
    if node.op in (Op.STATE, Op.UPDATE):
        return f"shape={shape}, style=\"filled,bold\", fillcolor={STATE_COLOR}"
    return f"shape={shape}"


def to_dot(cell) -> str:
    """The cell's IR, clustered by the plan's partition, as Graphviz dot text."""
    ir, partition = cell.ir, cell.plan.partition
    reads = {i: ir.node(i).args[0] for i in ir.graph.nodes if ir.node(i).op == Op.READ}

    def origin(i):  # through reads to the node read
        while i in reads:
            i = reads[i]
        return i

    lines = [f"digraph {_quote(ir.name)} {{", "  rankdir=TB; compound=true;",
             ("  node [fontname=monospace, fontsize=10]; edge [fontname=monospace, "
             "fontsize=9];"), (f"  label={_quote(_title(cell))}; "
             "labelloc=t;")]
    for i in sorted(ir.graph.nodes):
        node = ir.node(i)
        if node.stmt < 0:
            lines.append(f"  n{i} [label={_quote(_label(ir, node))}, {_style(node)}];")
    members: dict[int, list[int]] = {}
    for i in sorted(ir.graph.nodes):
        node = ir.node(i)
        if node.stmt >= 0 and i not in reads:
            members.setdefault(node.stmt, []).append(i)
    for phase, color in PHASES.items():
        stmts = [k for k, d in enumerate(ir.stmts) if partition.get(_key(ir.node(d))) == phase]
        if not stmts:
            continue
        lines += [f"  subgraph cluster_{phase} {{", (f"    label={_quote(phase)}; style=filled; "
                  f"fillcolor={color}; fontname=\"sans-serif\";")]
        for k in stmts:
            line = ir.spec_line(ir.node(ir.stmts[k]).loc)
            lines += [f"    subgraph cluster_s{k} {{",
                      (f"      label={_quote(_short(line))}; style=\"filled,rounded\"; "
                      "fillcolor=white; fontname=monospace; fontsize=9;")]
            lines += [f"      n{i} [label={_quote(_label(ir, ir.node(i)))}, "
                      f"{_style(ir.node(i))}];" for i in members.get(k, [])]
            lines.append("    }")
        lines.append("  }")
    lines += _edges(ir, reads, origin)
    lines.append("}")
    return "\n".join(lines)


def _title(cell) -> str:
    hypers = ", ".join(f"{k}={v!r}" for k, v in cell.hypers.items())
    return f"cell {cell.name}({hypers}): {cell.plan.summary}"


def _key(node) -> str:
    return f"{node.arg}'" if node.op == Op.UPDATE else node.arg


def _short(line: str, width: int = 70) -> str:
    line = line.split("#")[0].strip()
    return line if len(line) <= width else line[:width - 1] + "…"


def _edges(ir, reads: dict, origin) -> list[str]:
    lines = []
    for v in sorted(ir.graph.nodes):
        if v in reads:
            continue
        for a in ir.node(v).args:
            u = origin(a)
            label = f" [label={_quote('[' + ', '.join(map(str, ir.node(a).arg)) + ']')}]" \
                if a in reads and ir.node(a).arg else ""
            lines.append(f"  n{u} -> n{v}{label};")
    for decl in ir.states:
        if any(ir.node(d).op == Op.UPDATE and ir.node(d).arg == decl.name for d in ir.stmts):
            lines.append(f"  n{ir.update(decl.name).id} -> n{ir.leaves[decl.name]} [style=dashed, "
                         f"color=darkorange, constraint=false, label=\"next step\"];")
    return lines


def render(dot: str, path: str | None, spec: str) -> str:
    """Writes `dot` to `path`: the text for .dot, .gv or no path (returned), a picture
    made by Graphviz's `dot` for .svg, .png and .pdf."""
    suffix = Path(path).suffix.lower() if path else ""
    if path is None or suffix in (".dot", ".gv"):
        if path:
            Path(path).write_text(dot + "\n")
        return dot
    if suffix not in FORMATS:
        raise RecError(f"-o {path}: the picture formats are {', '.join(FORMATS)}; .dot or "
                       ".gv (or no -o) write dot text", Source("", spec))
    exe = shutil.which("dot")
    if exe is None:
        raise RecError(f"-o {path}: Graphviz's `dot` is not installed (Debian, Ubuntu: apt-get "
                       "install graphviz; macOS: brew install graphviz); -o FILE.dot writes "
                       "the dot text without it", Source("", spec))
    done = subprocess.run([exe, f"-T{suffix[1:]}", "-o", path], input=dot, text=True,
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise RecError(f"-o {path}: dot failed: {done.stderr.strip()}", Source("", spec))
    return dot
