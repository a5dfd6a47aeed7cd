"""The program of the scan backend (backends/scan.py): the loop body on all tokens
at once, a and b from it, the states by a scan function of reclang/runtime."""

from __future__ import annotations

from reclang.analysis.forms import Dense, Diag
from reclang.ir import IR
from reclang.schedule import ScanSchedule, Schedule

from .ir_to_torch import ExprLowering, Place
from .loop import INDENT, Program, py_name


class TokenLowering(ExprLowering):
    """The loop body run on all B·T tokens at once: a sequence computed before the
    loop is read whole, flattened to [B·T, ...], instead of step by step."""

    def at_step(self, var: str) -> str:
        if var not in self.unbound:
            self.unbound[var] = self.names.fresh(f"_{var.lstrip('_')}_tokens")
        return self.unbound[var]


class ScanProgram(Program):
    """The sequential forward with its loop replaced: the loop body becomes a function
    of all tokens at once, evaluated from chosen states (0 and 1 for a and b; the
    basis vectors along the mixed axes for a dense a) and from the scanned previous
    states (for the outputs)."""

    Lowering = TokenLowering
    title, scan_function, runtime = "Scan", "linear_scan", "scan"

    def __init__(self, ir: IR, form: Diag | Dense, schedule: Schedule | None = None,
                 summary: str = ""):
        super().__init__(ir, schedule or ScanSchedule(), summary)
        self.form = form
        # state -> (its mixed axes, their dims in its [B, ...] layout)
        self.mixed = {s.name: (s.mix_axes, s.mix_dims) for s in form.states if s.mix_axes}

    def scan_args(self) -> str:
        """The schedule's arguments of the scan function."""
        chunk = getattr(self.schedule, "chunk", None)
        return f", chunk={chunk}" if chunk else ""

    def loop(self, first: str, blocks, outputs, unbound) -> list[str]:
        states = [py_name(d.name) for d in self.ir.states]
        every = {s: self.names.fresh(f"_{s}_all") for s in states}  # all steps of a state
        lines = [f"B, T = {first}.shape[:2]"] + blocks[Place.HOIST]
        if not states:  # a cell without state: every statement is hoisted, nothing scans
            return lines
        if unbound:
            lines.append("# the sequences the loop body reads, as B·T tokens")
        lines += [f"{tokens} = {var}.flatten(0, 1)" for var, tokens in unbound.items()]
        stepwise = [n for n, home in outputs if home == Place.LOOP]
        outs = ", ".join(f'"{n.arg}": {py_name(n.arg)}' for n in stepwise)
        lines += [f"def _tokens(B, {', '.join(states)}):",
                  INDENT + '"""The loop body on B tokens at once (here B = B·T)."""']
        lines += [INDENT + line for line in blocks[Place.LOOP]]
        new = "".join(f"{s}, " for s in states).rstrip(" ")  # `h,`; none for a stateless cell
        lines.append(INDENT + f"return {{{outs}}}, ({new})")
        filled = {fill: [f"{s}.new_full((), {fill}).expand(B * T, *{s}.shape[1:])"
                         for s in states] for fill in (0, 1)}  # expand: nothing is filled
        lines.append("# h' = a h + b: b is the step from 0")
        lines.append(f"_, _from0 = _tokens(B * T, {', '.join(filled[0])})")
        if len(self.mixed) < len(states):
            lines.append("# elementwise a: a + b is the step from 1")
            lines.append(f"_, _from1 = _tokens(B * T, {', '.join(filled[1])})")
        for k, s in enumerate(states):
            name = self.ir.states[k].name
            if name in self.mixed:
                lines += self.dense_block(k, s, filled[0], every[s])
                continue
            lines += [f"# all states of {name}",
                      f"_b = _from0[{k}].reshape(B, T, *{s}.shape[1:])",
                      f"_a = _from1[{k}].reshape(B, T, *{s}.shape[1:]) - _b",
                      f"{every[s]} = {self.scan_function}(_a, _b, {s}{self.scan_args()})"]
        if stepwise:
            prev = [f"torch.cat([{s}[:, None], {every[s]}[:, :-1]], 1).flatten(0, 1)"
                    for s in states]
            lines.append("# the outputs of every step, from its previous states")
            lines.append(f"_outs, _ = _tokens(B * T, {', '.join(prev)})")
            lines += [f'{py_name(n.arg)} = _outs["{n.arg}"].unflatten(0, (B, T))'
                      for n in stepwise]
        lines += [f"{s} = {every[s]}[:, -1]" for s in states]
        return lines

    def dense_block(self, k: int, s: str, zeros: list[str], every: str) -> list[str]:
        """A state whose transition mixes some of its axes: the matrix column by column
        (the step from each basis vector along the mixed axes, minus b), then a dense
        scan in the layout with the mixed axes last and flattened."""
        d = self.ir.states[k]
        axes, dims = self.mixed[d.name]
        args = ", ".join("_e" if j == k else z for j, z in enumerate(zeros))
        seq_dims = tuple(x + 1 for x in dims)
        return [f"# all states of {d.name}: its transition mixes "
                f"{', '.join(axes)}, a matrix found from the basis "
                "vectors e",
                f"_a, _b = dense_transition(lambda _e: _tokens(B * T, {args})[1][{k}], "
                f"_from0[{k}], {dims})",
                f"{every} = dense_scan(_a.unflatten(0, (B, T)), _b.unflatten(0, (B, T)), "
                f"mixed_last({s}, {dims}){self.scan_args()})",
                f"{every} = from_mixed_last({every}, {seq_dims}, (B, T, *{s}.shape[1:]))"]

    def source(self) -> str:
        header = self.header([
            f"{self.title} backend: h' = a h + b elementwise, over time by {self.scan_function};",
            "the loop body of the sequential backend runs on all tokens at once."])
        names = [self.scan_function]
        if self.mixed:
            names += ["dense_scan", "dense_transition", "from_mixed_last", "mixed_last"]
        imports = ["import torch", "",
                   f"from reclang.runtime.{self.runtime} "
                   f"import {', '.join(names)}"]
        forward = self.function(
            "forward", f"Runs {self.ir.name} over whole sequences with a scan: inputs "
            "[B, T, ...], states are the initial ones; returns (outputs, final states).",
            step=False)
        return "\n".join(header + imports) + "\n\n\n" + forward + "\n\n\n" + \
            self.step_function() + "\n"

