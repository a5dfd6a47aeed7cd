"""A malformed spec never produces a traceback: random edits of valid specs either
load, or raise RecError (never another exception)."""

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

import torch

import reclang

SPEC = (Path(__file__).resolve().parent.parent / "specs" / "gla.rec").read_text()
EXTRA = """cell mix(D = 4, N = 3, scale = 0.5):
    input x[D], g[N]
    param W[N, D] ~ normal(0, 0.1)
    param A[i: N, j: N] = where(i < j, 1.0, 0.0)
    state h[N] = 0, z[N]: complex = 0
    u[n] = sum(d: W[n, d] * x[d]) + max(m: A[n, m] * h[m])
    h[n] <- exp(g[n]) * h[n] + tanh(u[n]) * scale
    z[n] <- exp(1j * g[n]) * z[n] + complex(h[n], 0)
    out y[n] = real(z[n]) + clamp(h[n], -1, 1)
"""
PIECES = ["[", "]", "(", ")", ",", ":", "=", "<-", "sum(", "i", "x", "1j", "**", "-", "\n",
          "    ", "out ", "state ", "param ", "#", "0", "-1e30", "exp", "complex", "k[h]"]


def mutate(text: str, edits) -> str:
    for position, delete, insert in edits:
        p = position % (len(text) + 1)
        text = text[:p] + insert + text[p + delete:]
    return text


edit = st.tuples(st.integers(0, 10_000), st.integers(0, 3), st.sampled_from(PIECES + [""]))


@settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", 300)), deadline=None)
@given(base=st.sampled_from([SPEC, EXTRA]), edits=st.lists(edit, min_size=1, max_size=3))
def test_random_edits_give_rec_errors(base, edits):
    text = mutate(base, edits)
    try:
        cell = reclang.loads(text, "fuzz.rec")
    except reclang.RecError as err:
        assert str(err).startswith("fuzz.rec")
        return
    # a spec that checks must also compile and run
    m = cell.module()
    inputs = {d.name: torch.randn(1, 2, *d.shape) for d in cell.ir.inputs}
    m(**inputs)
