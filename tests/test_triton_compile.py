"""The generated Triton kernels compile for an H100 (sm_90) on a machine without a GPU,
with the flags of every launch the backends make, and keep their state in registers (no spills):
the interpreter, which runs the other tests, does not check what only the compiler
does (types, constexpr branches, register pressure)."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "compile_kernels.py"


def test_kernels_compile_for_sm90_without_spilling():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    # 41 before the matrix kernels' slots: their forward launches (RAW) are 10 more
    # variants, the gated scan's readout kernels 4, the newton backend's kernels 9
    assert len(lines) == 64, result.stdout
    for line in lines:
        kernel, flags, regs, stack, local = line.split()
        # spilled registers go to the stack frame (local memory); 32 bytes is what the
        # gla forward keeps there, and the fused loop's float64 backward 16
        assert local == "LOCAL:0", f"{kernel} {flags} uses local memory: {line}"
        assert int(stack.removeprefix("STACK:")) <= 32, f"{kernel} {flags} spills: {line}"
        assert int(regs.removeprefix("REG:")) <= 255, line
