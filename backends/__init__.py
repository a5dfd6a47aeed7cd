"""The backends, registered in the order `reclang inspect` lists them (see base.py for
the protocol)."""
# isort: skip_file
from . import (sequential, scan, chunk, fft, triton_scan, triton_matrix, triton_loop,  # noqa: F401
               newton, cpu_loop)
