"""Compiles generated Triton kernels for an H100 (sm_90) without a GPU, and prints the
registers, stack frame and local memory per thread of each (spilled registers go to
the stack frame), one line per kernel:

    <kernel> <flags and blocks> REG:<n> STACK:<bytes> LOCAL:<bytes>

Run by tests/test_triton_compile.py in a process of its own: under TRITON_INTERPRET=1
(how the other tests run the kernels) triton.jit gives interpreted functions, which
the compiler cannot take. It uses the ptxas and cuobjdump that the triton wheel ships.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"

import triton  # noqa: E402
from helpers import every_variant  # noqa: E402  (this file's folder, run as a script)
from triton.backends.compiler import GPUTarget  # noqa: E402

import reclang  # noqa: E402

SPECS = Path(__file__).resolve().parent.parent / "specs"
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
MATRIX_ARGS = "w_ptr x_ptr y_ptr rk_ptr rv_ptr lw_ptr c0_ptr out_k_ptr out_v_ptr last_ptr " \
    "starts_ptr"
SCAN_ARGS = "a_ptr b_ptr h0_ptr out_ptr states_ptr grad_a_ptr"
FUSED_ARGS = {"forward": "ops_ptr consts_ptr w_ptr hist_ptr out_ptr",
              "backward": "ops_ptr consts_ptr w_ptr hist_ptr d_out_ptr d_last_ptr d_ops_ptr "
                          "d_consts_ptr d_r_ptr d_first_ptr"}  # then start_ptr (int32), T, B
CHUNK_ARGS = {
    "chunk_wy": "w_ptr x_ptr y_ptr a_ptr b_ptr wy_ptr u_ptr scores_ptr chunk_token_ptr "
                "chunk_end_ptr",
    "chunk_states": "w_ptr x_ptr y_ptr c0_ptr states_ptr last_ptr starts_ptr chunk_first_ptr",
    "chunk_wy_states": "w_ptr x_ptr y_ptr a_ptr wy_ptr u_ptr c0_ptr states_ptr last_ptr "
                       "starts_ptr chunk_first_ptr",
    "chunk_read_k": "w_ptr x_ptr y_ptr a_ptr u_ptr rk_ptr states_ptr out_ptr chunk_token_ptr "
                    "chunk_end_ptr",
    "chunk_read_v": "w_ptr x_ptr y_ptr a_ptr u_ptr rv_ptr states_ptr out_ptr chunk_token_ptr "
                    "chunk_end_ptr"}
NEWTON = ("newton", "newton_finish", "newton_adjoint")  # the newton backend's kernels
FEED = ("gated_delta_net", "rwkv7")   # delta rules: scalar and key-wise decays
KEYWISE = ("gla", "rwkv7")
# (spec, kernel family, flags of each launch the backend makes); the blocks, below, are
# those the launchers pick at fla-like sizes (K = V = 128)
RECURRENT = ("VARLEN", "KEYWISE", "REVERSE", "R_UPDATE", "R_READ_K", "R_READ_V", "R_FEED")
CASES = [
    ("lru", "scan", [dict(BACKWARD=backward, COMPLEX=complex_) for backward, complex_ in
                     ((False, False), (True, False), (True, True))]),
    ("gla", "recurrent", [dict(zip(RECURRENT, flags)) for flags in [
        (0, 1, 0, 1, 1, 0, 0),      # forward
        (0, 1, 1, 1, 1, 1, 0),      # backward: reverse
        (0, 1, 0, 1, 0, 1, 0),      # backward: forward again
        (1, 1, 1, 1, 1, 1, 0)]]),   # packed sequences
    ("gated_delta_net", "recurrent", [dict(zip(RECURRENT, flags)) for flags in [
        (0, 0, 0, 1, 2, 0, 1), (0, 0, 1, 1, 2, 2, 1), (0, 0, 0, 1, 1, 2, 1)]]),
    ("gated_delta_net@K=256", "recurrent", [dict(zip(RECURRENT, (0, 0, 1, 1, 2, 2, 1)))]),
] + [(spec, family, [dict(VARLEN=v) for v in ((0, 1) if spec == "mamba_s6" else (0,))])
     for spec in ("min_gru", "rg_lru", "mamba_s6")
     for family in ("gated_scan", "gated_scan_backward")] + \
    [("mamba_s6", family, [dict(VARLEN=v) for v in (0, 1)])  # the readout in the kernel
     for family in ("gated_read", "gated_read_backward")] + \
    [(spec, f"chunk_{part}", [{}]) for spec in FEED for part in ("wy", "wy_states")] + \
    [(spec, "chunk_states", [{}]) for spec in ("gla", "simple_gla")] + \
    [(spec, f"chunk_{part}", [{}]) for spec in ("gla", "simple_gla", *FEED)
     for part in ("read_k", "read_v")] + \
    [(spec, family, [dict(HEADS=heads)]) for spec, heads in (("lstm", 1), ("gru", 1),
     ("slstm", 4), ("lstm@fp64", 1)) for family in ("forward", "backward")] + \
    [(spec, family, [{}]) for spec in ("para_gru", "para_gru@fp64", "indrnn")  # N = 64
     for family in NEWTON]


def compile_sm90(kernel, signature: dict, constexprs: dict, num_warps: int) -> bytes:
    source = triton.compiler.ASTSource(
        fn=kernel, signature={**signature, **{k: "constexpr" for k in constexprs}},
        constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps})
    return compiled.asm["cubin"]


def resources(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(TOOLS / "cuobjdump"), "--dump-resource-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if "REG:" in x).split()
    return " ".join(x for x in line if x.startswith(("REG:", "STACK:", "LOCAL:")))


def launch_setup(family: str, variant: str, kernel) -> tuple[dict, dict, int]:
    """The signature, blocks and warps of a kernel family as its launcher picks them;
    `variant`: "K=<keys>" for the matrix kernel, "fp64" for the fused loop (the tests'
    dtype on a GPU)."""
    if family.startswith(("gated_scan", "gated_read")):  # float32 operands and states
        signature = {n: "i32" if n in ("T", "S") else "*i64" if n in ("starts_ptr", "tiles_ptr")
                     else "*fp32" for n in kernel.arg_names
                     if not n.startswith("BLOCK_") and n not in ("VARLEN", "GROUP")}
        blocks = dict(BLOCK_T=64, BLOCK_S=32, **({"GROUP": 16} if "read" in family else {}))
        return signature, blocks, 8 if "backward" in family else 4
    if family in NEWTON:  # float32 (or 64) operands and states, as the launcher's blocks
        dtype = "*fp64" if variant == "fp64" else "*fp32"
        signature = {n: "i32" if n in ("T", "S", "start") else "fp32" if n == "damping"
                     else dtype for n in kernel.arg_names if not n.startswith("BLOCK_")}
        if family == "newton_finish":  # one step at a time: a warp
            return signature, dict(BLOCK_S=32), 1
        steps = 32 if family == "newton_adjoint" and variant == "fp64" else 64
        return signature, dict(BLOCK_T=steps, BLOCK_S=32), 8
    if family == "scan":
        signature = {**{n: "*fp32" for n in SCAN_ARGS.split()}, "T": "i32", "S": "i32"}
        return signature, dict(BLOCK_T=64, BLOCK_S=32), 8 if "backward" in family else 4
    if family in FUSED_ARGS:  # float32 (or 64) throughout; N = 64 units
        dtype = "*fp64" if variant == "fp64" else "*fp32"
        signature = {**{n: dtype for n in FUSED_ARGS[family].split()}, "start_ptr": "*i32",
                     "T": "i32", "B": "i32"}
        return signature, dict(N=64, BLOCK_B=16, BLOCK_N=64), 8
    if family.startswith("chunk_"):  # bf16 operands, float32 states and readouts
        names = CHUNK_ARGS[family].split()
        operands = ("w_", "x_", "y_", "a_", "b_", "rk", "rv") if variant.startswith("feed") else \
            ("w_", "x_", "y_", "a_", "u_", "wy", "rk", "rv")  # (a, u) unread: x, y
        signature = {n: "*bf16" if n[:2] in operands else "*fp32" for n in names}
        signature.update({n: "*i64" for n in names[-2:]})  # the chunk tables
        signature.update({n: "i32" for n in ("H", "K", "V")})
        signature["raw"] = ("*bf16",) * int(variant.rpartition("raw=")[2] or 1)  # raw inputs
        return signature, {}, 0  # the sizes: the generated file's chunk_blocks
    # the matrix kernel: bf16 operands, float32 carry and readouts
    signature = {n: "*bf16" if i < 6 else "*fp32" for i, n in enumerate(MATRIX_ARGS.split())}
    signature["starts_ptr"] = "*i64"
    signature.update({n: "i32" for n in ("T", "H", "K", "V", "TOKENS")})
    block_k = int(variant.removeprefix("K=") or 128)
    return signature, dict(BLOCK_K=block_k, BLOCK_V=32), block_k * 32 // 512


def _slots(code):
    """The slots of the generated file's first state."""
    return next(x for x in vars(code).values() if type(x).__name__ == "Slots")


def _raw_inputs(code) -> int:
    """How many raw inputs the slots of the generated file's first state read."""
    return len(inspect.signature(_slots(code).operands).parameters)


def main(only: str = "") -> None:
    """Every case, or those of the kernel families that start with `only`."""
    for case, family, launches in CASES:
        if not family.startswith(only):
            continue
        spec, _, variant = case.partition("@")
        cell = reclang.load(SPECS / f"{spec}.rec")  # sizes are arguments of the kernel
        # a matrix cell's file holds the variants its plan calls; these are compiled all
        code = every_variant(cell) if cell.plan.form in ("mat-decay", "dplr") else \
            cell.module("newton" if family in NEWTON else "triton")._generated
        kernel = getattr(code, f"{spec}_{family}_kernel")
        feed = spec in FEED and family.startswith("chunk_")
        if family.startswith("chunk_"):  # the forward launches compute operands (RAW)
            variant = ("feed" if feed else "") + f"raw={_raw_inputs(code)}"
            launches = [dict(STATE=0, RAW=raw) for raw in
                        ((0,) if family == "chunk_read_v" else (1, 0))]
            if family == "chunk_read_k":  # the forward reads the new state (INCLUSIVE)
                inclusive = _slots(code).inclusive
                launches = [{**flags, "INCLUSIVE": flags["RAW"] and inclusive}
                            for flags in launches]
        signature, blocks, warps = launch_setup(family, variant, kernel)
        if family.startswith("chunk_"):  # as the launcher picks them, at K = V = 128
            blocks = code.chunk_blocks(family.removeprefix("chunk_"), spec in KEYWISE, 128,
                                       128, feed)
            warps = blocks.pop("num_warps")
        for flags in launches:
            cubin = compile_sm90(kernel, signature, {**flags, **blocks}, warps)
            described = ",".join(f"{k}={int(v)}" for k, v in {**flags, **blocks}.items())
            name = kernel.__name__ + ("_fp64" if variant == "fp64" else "")
            print(f"{name} {described} {resources(cubin)}", flush=True)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
