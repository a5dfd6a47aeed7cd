"""Python names for the spec's names: injective, never a keyword, a builtin or a name
the generated code uses itself."""

from __future__ import annotations

import builtins
import keyword

from reclang.ir import IR

# The names without a leading `_` that generated code (forward, step, the module around
# them) binds or reads: Python's, the imports, the functions the backends and templates
# define for forward to call, and the loop's own variables. tests/test_names.py checks
# this list against every catalogue cell's generated source.
GENERATED = {
    "torch", "triton", "tl", "os", "B", "T", "t", "forward", "step", "cu_seqlens",
    "linear_scan", "dense_scan", "dense_transition", "from_mixed_last", "mixed_last",
    "fft_scan", "chunk_affine", "check_log_decay", "operand", "state_pass", "gated_scan",
    "state_pass_slots", "gated_readout", "final_states", "previous_states", "fused_loop",
    "constant", "pad_packed", "pad_packed_parts", "unpad_packed", "cpu_kernel", "chunk_tables",
    "chunk_blocks", "check_offsets",
    "ctx", "self"}


RESERVED = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | \
    frozenset(dir(builtins)) | frozenset(GENERATED)


# The generated code's own `_` names that are not made by `Names.fresh`.
OWN = {"_", "_lag", "_dtype", "_device", "_cdtype", "_like", "_tokens", "_from0", "_from1", "_a",
       "_b", "_e", "_outs", "_h0", "_starts", "_ops", "_consts", "_w", "_out", "_last"}


def py_name(name: str) -> str:
    """The Python variable for a spec name: the name itself, or with one more `_` when it
    is reserved or already ends in `_`. Injective (exactly the images of the second kind
    end in `_`), never reserved (no reserved name ends in `_` unless it starts with one),
    and never one of the generated code's own names (those start with `_`, spec names
    with a letter)."""
    return name + "_" if name in RESERVED or name.endswith("_") else name


class Names:
    """The variables of one generated function: the spec's (by py_name), the fixed
    ones of OWN, and temporaries from `fresh`, each unique within the function."""

    def __init__(self, ir: IR):
        self.taken = set(OWN) | {py_name(d) for d in ir.decls} | {
            py_name(ir.node(i).arg) for i in ir.stmts}
        self.memo: dict = {}

    def fresh(self, stem: str) -> str:
        """`stem` (which starts with `_`), or stem2, stem3, ... if it is taken."""
        name, k = stem, 1
        while name in self.taken:
            k += 1
            name = f"{stem}{k}"
        self.taken.add(name)
        return name

    def constant(self, key, stem: str) -> tuple[str, bool]:
        """The variable of a named constant and whether it is new: a spec let's own name
        (no statement assigns it: its reads are the number), else one made from `stem`."""
        if key in self.memo:
            return self.memo[key], False
        self.memo[key] = stem if not stem.startswith("_") else self.fresh(stem)
        return self.memo[key], True

    def of(self, key, stem: str) -> str:
        """The temporary for `key`, made from `stem` the first time it is asked for."""
        if key not in self.memo:
            self.memo[key] = self.fresh(stem)
        return self.memo[key]

