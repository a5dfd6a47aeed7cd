"""Backends: each lowers a checked cell to source text (installed as reclang.backends)."""
