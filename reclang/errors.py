"""User-facing errors: every mistake in a spec becomes a `RecError`.

A `RecError` carries one or more `Diagnostic`s. Each prints as

    spec.rec:12:5: error: unknown name 'kk'
        S[h, i, j] <- exp(g[h, i]) * S[h, i, j] + kk[h, i] * v[h, j]
                                                  ^

so that a user sees the file, the line and the column of every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A position in a spec: 1-based line and column."""

    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.line}:{self.col}"


NOWHERE = Loc(0, 0)


@dataclass(frozen=True)
class Source:
    """The text of a spec and the name it is reported under."""

    text: str
    filename: str = "<string>"

    def line(self, n: int) -> str:
        # the grammar's line breaks, as the parser counts them (splitlines would also
        # break at \v, \f, U+2028, ... inside a comment and shift every later line)
        lines = self.text.split("\n")
        return lines[n - 1].removesuffix("\r") if 1 <= n <= len(lines) else ""


@dataclass(frozen=True)
class Diagnostic:
    message: str
    loc: Loc = NOWHERE

    def render(self, source: Source | None) -> str:
        name = source.filename if source else "<spec>"
        if self.loc == NOWHERE or source is None:
            return f"{name}: error: {self.message}"
        text = source.line(self.loc.line)
        caret = " " * (self.loc.col - 1) + "^"
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
