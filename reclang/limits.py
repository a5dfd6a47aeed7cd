"""The limits of the language, in one place (docs/guarantees.md explains each).

A spec past a limit gets a RecError at the place that passes it, never a crash, a hang
or an exhausted memory; within them, checking and compiling a spec takes time about
linear in its size.
"""

import sys

NAME_LENGTH = 100          # characters in a name: generated file names stay valid
DEPTH = 100                # nesting of one expression (brackets, operators, calls)
CHAIN = 300                # operations a value passes through, across the lets it reads
NUMBER = sys.float_info.max  # largest constant magnitude: finite in float64
INDICES = 26               # distinct indices in one statement (einsum letters)
ELEMENTS = 2 ** 31 - 1     # elements of one tensor or one statement's index space (int32)
