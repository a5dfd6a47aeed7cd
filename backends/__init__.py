"""The backends, registered in the order `reclang inspect` lists them (see base.py for
the protocol)."""
# isort: skip_file
from . import sequential, scan, chunk, fft, triton_scan, triton_matrix, triton_loop, newton  # noqa: F401
