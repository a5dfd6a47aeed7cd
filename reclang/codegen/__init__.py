"""Printing helpers that backends share: names, expressions in PyTorch and Triton, the
programs each lowering prints (the loop, the token-parallel scan body, the chunkwise
operands, the fused loop's lanes), and the rendering of kernel templates."""
