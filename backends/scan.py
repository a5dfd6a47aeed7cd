"""The scan backend: a parallel scan over time, for cells whose plan is `diag` or
`diag-lti` (every state updated elementwise, h_t = a_t ⊙ h_{t-1} + b_t).

Recurrence: h_t = a_t ⊙ h_{t-1} + b_t, t = 0 .. T-1, from the initial state h_{-1}.
Algorithm:  1. a_t and b_t for all steps at once, from the cell's own step function
               evaluated on all B·T tokens in one batch: b = step(h = 0) and
               a = step(h = 1) − step(h = 0) (exact in exact arithmetic, because the
               analyzer proved the update elementwise affine in h).
            2. `linear_scan`: within chunks of C steps, an inclusive Hillis–Steele scan
               of the affine maps (log2 C doubling rounds, each one batched tensor op);
               across chunks, the carry h is passed chunk by chunk (T / C small steps).
            3. The outputs: the step function once more on all tokens, with the
               previous states h_{t-1}, so that any readout (of the new or the previous
               state, pointwise or not) is computed exactly as the spec says.
Cost:       O(B·T·state·log C) work and memory for the scan, plus three batched
            evaluations of the step; the sequential part is T / C steps.
Numerics:   no exp of cumulative sums (works for negative and complex decays); a is
            obtained by a difference, so its rounding error is about eps·|a + b|.
            Gradients flow through the scan by autograd.
"""

from __future__ import annotations

import torch

from reclang.ir import IR

from .sequential import INDENT, Program, py_name

CHUNK = 64


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor,
                chunk: int = CHUNK) -> torch.Tensor:
    """All states of h_t = a_t ⊙ h_{t-1} + b_t, t = 0..T-1, from h0.

    a, b: [B, T, *S]; h0: [B, *S]. Returns [B, T, *S]. The composition of affine maps,
    (a1, b1) then (a2, b2) = (a2 a1, a2 b1 + b2), is associative; within each chunk the
    inclusive scan of the maps is built by doubling, then each chunk is applied to the
    state that the previous chunk ends with.
    """
    B, T = a.shape[:2]
    C = min(chunk, T)
    pad = (-T) % C
    if pad:  # identity maps at the end: a = 1, b = 0
        a = torch.cat([a, a.new_ones((B, pad, *a.shape[2:]))], 1)
        b = torch.cat([b, b.new_zeros((B, pad, *b.shape[2:]))], 1)
    a = a.reshape(B, -1, C, *a.shape[2:])
    b = b.reshape(B, -1, C, *b.shape[2:])
    shift = 1
    while shift < C:  # after this round, step c composes steps c-2·shift+1 .. c
        a_before = torch.cat([a.new_ones(a[:, :, :shift].shape), a[:, :, :-shift]], 2)
        b_before = torch.cat([b.new_zeros(b[:, :, :shift].shape), b[:, :, :-shift]], 2)
        a, b = a * a_before, a * b_before + b
        shift *= 2
    states, h = [], h0
    for a_j, b_j in zip(a.unbind(1), b.unbind(1)):  # unbind: one gradient op, not T/C
        chunk_states = a_j * h.unsqueeze(1) + b_j
        states.append(chunk_states)
        h = chunk_states[:, -1]
    return torch.cat(states, 1)[:, :T]


class ScanProgram(Program):
    """The generated module: the cell's step function and a forward that scans."""

    def call_step(self, states: dict[str, str]) -> str:
        ins = [f"_all_{py_name(d.name)}" for d in self.ir.inputs]
        sts = [states[d.name] for d in self.ir.states]
        params = [f"{py_name(d.name)}={py_name(d.name)}" for d in self.ir.params]
        return f"step({', '.join(ins + sts + params)})"

    def forward(self) -> str:
        first = py_name(self.ir.inputs[0].name)
        lines = [f"B, T = {first}.shape[:2]",
                 "# every token at once: [B, T, ...] -> [B·T, ...]"]
        lines += [f"_all_{py_name(d.name)} = {py_name(d.name)}.reshape(B * T, "
                  f"*{py_name(d.name)}.shape[2:])" for d in self.ir.inputs]
        tokens = {d.name: f"{py_name(d.name)}.new_{{}}((B * T, *{py_name(d.name)}.shape[1:]))"
                  for d in self.ir.states}
        lines.append("# h' = a h + b elementwise: b is the step from 0, a + b the step from 1")
        for value, fill in (("_from0", "zeros"), ("_from1", "ones")):
            filled = {k: v.format(fill) for k, v in tokens.items()}
            lines.append(f"_, {value} = {self.call_step(filled)}")
        prev = {}
        for d in self.ir.states:
            name = py_name(d.name)
            lines.append(f"# all states of {d.name}, and the previous state of every step")
            lines.append(f'_b = _from0["{d.name}"].reshape(B, T, *{name}.shape[1:])')
            lines.append(f'_a = _from1["{d.name}"].reshape(B, T, *{name}.shape[1:]) - _b')
            lines.append(f"_{name}_all = linear_scan(_a, _b, {name})")
            lines.append(f"_{name}_prev = torch.cat([{name}[:, None], _{name}_all[:, :-1]], 1)"
                         f".reshape(B * T, *{name}.shape[1:])")
            prev[d.name] = f"_{name}_prev"
        lines.append("# the outputs of every step, from its previous states")
        lines.append(f"_outs, _ = {self.call_step(prev)}")
        outs = "{k: v.reshape(B, T, *v.shape[1:]) for k, v in _outs.items()}"
        finals = ", ".join(f'"{d.name}": _{py_name(d.name)}_all[:, -1]' for d in self.ir.states)
        lines.append(f"return {outs}, {{{finals}}}")
        doc = (f'"""Runs {self.ir.name} over whole sequences with a parallel scan: inputs '
               '[B, T, ...]; returns (outputs, final states)."""')
        return "\n".join([self.signature("forward"), INDENT + doc] +
                         [INDENT + line for line in lines])

    def source(self) -> str:
        header = self.header([
            "Scan backend: h' = a h + b elementwise, scanned in parallel over time",
            "(reclang.backends.scan.linear_scan); `step` is the cell's own step function."])
        imports = ["import torch", "", "from reclang.backends.scan import linear_scan"]
        return "\n".join(header + imports) + "\n\n\n" + self.step_function() + "\n\n\n" + \
            self.forward() + "\n"


def generate(ir: IR) -> str:
    """The generated source of the scan backend (forward and step)."""
    return ScanProgram(ir).source()
