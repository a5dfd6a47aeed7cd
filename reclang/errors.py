"""User-facing errors: every mistake in a spec becomes a `RecError`.

A `RecError` carries one or more `Diagnostic`s. Each prints as

    spec.rec:12:5: error: unknown name 'kk'
        S[h, i, j] <- exp(g[h, i]) * S[h, i, j] + kk[h, i] * v[h, j]
                                                  ^

so that a user sees the file, the line and the column of every problem at once.
A `Loc` knows the `Source` it points into, so a diagnostic made far from the parser (in
the analysis, in a backend) still names its file and shows its line. `at(node, stage)`
turns an unexpected exception inside a pass into such a diagnostic, at the node the
pass was working on:

    spec.rec:12:5: error: internal error in analysis: KeyError: 'S'
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Loc:
    """A position in a spec: 1-based line and column, and the spec's text and file name.
    Two locations are equal when their positions are: the source is where the position
    is shown, not part of it (one spec's nodes compare equal across parses)."""

    line: int
    col: int
    source: Source | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.line}:{self.col}"

    @property
    def file(self) -> str:
        return self.source.filename if self.source else "<spec>"


NOWHERE = Loc(0, 0)


@dataclass(frozen=True)
class Source:
    """The text of a spec and the name it is reported under."""

    text: str
    filename: str = "<string>"

    def line(self, n: int) -> str:
        """Line `n` as the lexer counts lines: only '\\n' ends one (str.splitlines would
        also split at a form feed, a vertical tab, NEL, U+2028 and U+2029)."""
        lines = self._lines
        return lines[n - 1].removesuffix("\r") if 1 <= n <= len(lines) else ""

    @functools.cached_property
    def _lines(self) -> list[str]:  # split once: every generated line cites its spec line
        return self.text.split("\n")


@dataclass(frozen=True)
class Diagnostic:
    message: str
    loc: Loc = NOWHERE

    def render(self, source: Source | None) -> str:
        """`source`: the spec's, for a location that does not carry it (or no location)."""
        source = self.loc.source or source
        name = source.filename if source else "<spec>"
        if self.loc == NOWHERE or source is None:
            return f"{name}: error: {self.message}"
        text = source.line(self.loc.line)
        # keep the line's tabs under the caret, so that it points at the same column
        caret = "".join(c if c == "\t" else " " for c in text[:self.loc.col - 1]) + "^"
        return f"{name}:{self.loc}: error: {self.message}\n    {text}\n    {caret}"


class RecError(Exception):
    """A problem in a spec (or in the arguments given when loading it)."""

    def __init__(self, diagnostics: list[Diagnostic] | str, source: Source | None = None,
                 loc: Loc = NOWHERE):
        if isinstance(diagnostics, str):
            diagnostics = [Diagnostic(diagnostics, loc)]
        self.diagnostics = list(diagnostics)
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        return "\n".join(d.render(self.source) for d in self.diagnostics)

    @property
    def loc(self) -> Loc:
        return self.diagnostics[0].loc

    @property
    def message(self) -> str:
        return self.diagnostics[0].message


class Collector:
    """Gathers diagnostics during a pass, so that all problems are reported together."""

    def __init__(self, source: Source):
        self.source = source
        self.diagnostics: list[Diagnostic] = []

    def error(self, message: str, loc: Loc) -> None:
        diag = Diagnostic(message, loc)
        if diag not in self.diagnostics:
            self.diagnostics.append(diag)

    def raise_if_any(self) -> None:
        if self.diagnostics:
            ordered = sorted(self.diagnostics, key=lambda d: (d.loc.line, d.loc.col))
            raise RecError(ordered, self.source)


@contextmanager
def at(node, stage: str, expected: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Reports an unexpected exception raised inside the block as an internal error of
    `stage` at `node` (anything with a `.loc`, or a Loc): the user sees which spec line
    the compiler failed on. RecErrors pass through (an inner `at` already placed them),
    and so do the `expected` exceptions a pass uses to steer itself."""
    try:
        yield
    except (RecError, *expected):
        raise
    except Exception as err:
        loc = node if isinstance(node, Loc) else getattr(node, "loc", NOWHERE)
        raise RecError(f"internal error in {stage}: {type(err).__name__}: {err}",
                       loc=loc) from err
