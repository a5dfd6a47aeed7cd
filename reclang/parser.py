"""Text to AST: the lark grammar, the line-joining rule, and friendly syntax errors."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import lark
from lark import Token, Transformer, v_args

from . import ast, config
from .errors import Loc, RecError, Source, at


class LineJoiner:
    """Decides which newlines end a statement, and where `for` blocks open and close.

    A newline inside brackets never ends a statement; nor does one followed by a line
    indented deeper than the line that began the statement (a continuation). The newline
    after the `cell ...:` header always does, and sets the body's indentation. The
    newline after a `for ...:` header opens a block (_INDENT) whose lines are indented
    deeper than the header; the first line indented less than the block closes it
    (_DEDENT, then the newline that ends the `for` statement), as in Python. Inside a
    block, the lines' indentation must match exactly (no mixing of tabs and spaces).
    """

    always_accept = ("_NL",)

    def __init__(self):
        self.open: list[Token] = []  # brackets not yet closed, for error messages

    def process(self, stream):
        self.open = []
        blocks: list[str] = []  # the indentation of each open `for` block, innermost last
        body = None  # the indentation of the cell's body
        stmt_indent, prev, first = "", None, None  # first: the statement's first token
        misplaced = None  # a line's indentation problem, raised if a statement follows
        for tok in stream:
            if tok.type != "_NL":
                if misplaced:
                    raise misplaced
                if tok.type in ("LPAR", "LSQB"):
                    self.open.append(tok)
                elif tok.type in ("RPAR", "RSQB") and self.open:
                    self.open.pop()
                first = first or tok
                prev = tok
                yield tok
                continue
            if prev is None or self.open:
                continue
            indent = re.match(r"[\t ]*", tok.value.rsplit("\n", 1)[-1]).group()
            header = prev.type == "COLON"
            if header and first.type == "FOR":
                if len(indent) <= len(stmt_indent):  # raised unless the file ends here
                    misplaced = _LayoutProblem("the body of a for block is indented deeper "
                                               "than its `for` line", first.line, first.column)
                blocks.append(indent)
                prev, opened = _token("_INDENT", tok), first
            elif header or len(indent) <= len(stmt_indent):
                body = indent if body is None else body
                closed, misplaced = _close(blocks, body, indent, tok)
                yield from (_token("_DEDENT", tok) for _ in range(closed))
                prev = tok
            else:
                continue  # a continuation line
            stmt_indent, first = indent, None
            yield prev
        if prev is not None and prev.type == "_INDENT":
            raise _LayoutProblem("the for block has no body", opened.line, opened.column)
        yield from (_token("_DEDENT", prev) for _ in blocks)


def _close(blocks: list[str], body: str, indent: str, tok: Token):
    """How many blocks a line at `indent` closes, and its problem if it starts
    elsewhere than its block's lines (or, after a block, than the cell's body)."""
    closed = 0
    while blocks and len(indent) < len(blocks[-1]):
        blocks.pop()
        closed += 1
    level = blocks[-1] if blocks else body
    if (blocks or closed) and indent != level:
        how = ("mixes tabs and spaces differently from the lines around it"
               if indent and level and set(indent) != set(level) or len(indent) == len(level)
               else "matches no enclosing block")
        return closed, _LayoutProblem(f"the indentation of this line {how}", tok.end_line,
                                      len(indent) + 1)
    return closed, None


def _token(kind: str, at: Token) -> Token:
    """A layout token placed at `at` (the newline it stands for: an error there points
    at the end of the statement's line)."""
    return Token(kind, "", at.start_pos, at.line, at.column, at.line, at.column, at.start_pos)


@lru_cache(maxsize=1)
def _lark() -> lark.Lark:
    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    return lark.Lark(grammar, parser="lalr", lexer="contextual", postlex=LineJoiner(),
                     propagate_positions=True, maybe_placeholders=True)


def _loc(x, source: Source) -> Loc:
    return Loc(getattr(x, "line", 0) or 0, getattr(x, "column", 0) or 0, source)


@v_args(meta=True)
class ToAst(Transformer):
    """Maps each grammar rule onto its dataclass, each located in `source`."""

    def __init__(self, source: Source):
        super().__init__()
        self.source = source

    def _loc(self, meta) -> Loc:
        return _loc(meta, self.source)

    # ---- expressions
    def number(self, meta, children):
        return ast.Num(_number(str(children[0]), self._loc(meta)), self._loc(meta))

    def imag(self, meta, children):
        return ast.Imag(float(_number(str(children[0])[:-1], self._loc(meta))), self._loc(meta))

    def name(self, meta, children):
        return ast.Name(str(children[0]), self._loc(meta))

    def subscript(self, meta, children):
        return ast.Subscript(str(children[0]), tuple(children[1:]), self._loc(meta))

    def call(self, meta, children):
        fn, args = str(children[0]), [a for a in children[1:] if a is not None]
        bound = [a for a in args if a[0] == "bound"]
        if not bound:
            return ast.Call(fn, tuple(a[1] for a in args), self._loc(meta))
        return self._reduce(fn, args, meta)

    def _reduce(self, fn, args, meta):
        *binders, last = args
        if last[0] != "bound" or any(a[0] == "bound" for a in binders):
            raise _SyntaxProblem(f"write a reduction as `{fn}(i, j: body)`: the indices, one ':', "
                          "then the body", self._loc(meta))
        _, last_binder, body = last
        names = [a[1] for a in binders] + [last_binder]
        for n in names:
            if not isinstance(n, ast.Name):
                raise _SyntaxProblem(f"the indices before ':' in {fn}(...) must be plain names",
                              getattr(n, "loc", self._loc(meta)))
        return ast.Reduce(fn, tuple(names), body, self._loc(meta))

    def arg_plain(self, meta, children):
        return ("plain", children[0])

    def arg_bound(self, meta, children):
        return ("bound", children[0], children[1])

    def _binary(op):
        def rule(self, meta, children):
            return ast.Binary(op, children[0], children[1], self._loc(meta))
        return rule

    add, sub, mul, div, pow = _binary("+"), _binary("-"), _binary("*"), _binary("/"), _binary("**")
    floordiv, mod = _binary("//"), _binary("%")

    def compare(self, meta, children):
        left, op, right = children
        return ast.Binary(str(op), left, right, self._loc(meta))

    def neg(self, meta, children):
        return ast.Unary("-", children[0], self._loc(meta))

    def pos(self, meta, children):
        return children[0]

    # ---- declarations
    def dim_size(self, meta, children):
        return ast.Dim(children[0], None, self._loc(meta))

    def dim_named(self, meta, children):
        return ast.Dim(children[1], str(children[0]), self._loc(meta))

    def dims(self, meta, children):
        return tuple(children)

    def tensor(self, meta, children):
        name, dims, dtype = children
        return ast.TensorDecl(str(name), dims or (), str(dtype or "real"), self._loc(meta))

    def input_decl(self, meta, children):
        return ast.InputDecl(tuple(children), self._loc(meta))

    def init_value(self, meta, children):
        return ast.Init(children[0], False)

    def init_random(self, meta, children):
        return ast.Init(children[0], True)

    def param_item(self, meta, children):
        tensor, init = children
        return (tensor, init)

    def param_decl(self, meta, children):
        """`param a[N], b[N] ~ normal(0, 1)` gives both the same initializer: an item
        without one takes the next one to its right."""
        tensors, inits, following = [], [], None
        for tensor, init in reversed(children):
            following = init if init is not None else following
            tensors.append(tensor)
            inits.append(following)
        return ast.ParamDecl(tuple(reversed(tensors)), tuple(reversed(inits)), self._loc(meta))

    def state_item(self, meta, children):
        return tuple(children)

    def state_decl(self, meta, children):
        return ast.StateDecl(tuple(c[0] for c in children), tuple(c[1] for c in children),
                             self._loc(meta))

    def target_index(self, meta, children):
        index, size = children
        if not isinstance(index, ast.Name):
            raise _SyntaxProblem("the left side of a statement names its indices (`y[i, j] = "
                                 "...`); a constant or an expression such as `i + 1` can only "
                                 "subscript a value that is read, on the right", index.loc)
        return ast.TargetIndex(index.name, size, index.loc)

    def for_block(self, meta, children):
        var, count, *body = children
        for stmt in body:
            if isinstance(stmt, (ast.InputDecl, ast.ParamDecl, ast.StateDecl)):
                raise _SyntaxProblem("declarations belong at the top of the cell, not inside "
                                     "a for block", stmt.loc)
        return ast.For(ast.Name(str(var), _loc(var, self.source)), count, tuple(body),
                       self._loc(meta))

    def target(self, meta, children):
        name, *indices = children
        return (str(name), tuple(i for i in indices if i is not None), self._loc(meta))

    def _assign(kind):
        def rule(self, meta, children):
            (name, indices, loc), value = children
            return ast.Assign(kind, name, indices, value, loc)
        return rule

    let, update, output = _assign("let"), _assign("update"), _assign("out")

    def hyper(self, meta, children):
        return ast.Hyper(str(children[0]), children[1], self._loc(meta))

    def cell(self, meta, children):
        name, *rest = children
        hypers = tuple(c for c in rest if isinstance(c, ast.Hyper))
        body = tuple(c for c in rest if c is not None and not isinstance(c, ast.Hyper))
        return ast.Cell(str(name), hypers, body, self._loc(meta))

    def start(self, meta, children):
        return children[0]


def _number(text: str, loc: Loc) -> int | float:
    """A literal's value; one beyond float64 (`1e400`, a 400-digit integer) is refused
    before Python converts it (int() refuses over 4,300 digits, float() gives inf)."""
    digits = text.lstrip("0")
    if text.isdigit() and len(digits) <= 309 and int(digits or "0") <= config.NUMBER:
        return int(digits or "0")
    if not text.isdigit() and abs(float(text)) <= config.NUMBER:
        return float(text)
    raise _SyntaxProblem(f"the number {_clip(text)} is too large: constants must be at most "
                         f"{config.NUMBER:.3g} in magnitude (float64)", loc)


def _clip(text: str, n: int = 20) -> str:
    return text if len(text) <= n else text[:n] + "..."


class _LayoutProblem(Exception):
    """A line whose indentation no block accepts, found by the LineJoiner (which has
    no source to locate it in)."""

    def __init__(self, message, line, col):
        super().__init__(message)
        self.message, self.line, self.col = message, line, col


class _SyntaxProblem(Exception):
    """A syntax rule the grammar cannot express, found while building the AST."""

    def __init__(self, message, loc):
        super().__init__(message)
        self.message, self.loc = message, loc


# Friendly names for the grammar's terminals, used in "expected ..." messages.
_TOKEN_WORDS = {
    "RSQB": "']'", "LSQB": "'['", "RPAR": "')'", "LPAR": "'('", "COMMA": "','",
    "COLON": "':'", "EQUAL": "'='", "NAME": "a name", "NUMBER": "a number",
    "_NL": "the end of the line", "$END": "the end of the file", "TYPE": "'real' or 'complex'",
    "COMPARE": "a comparison", "IMAG": "a number", "_INDENT": "an indented block",
    "_DEDENT": "the end of the block",
}


def _describe(token) -> str:
    if token.type in ("$END", "_NL", "_INDENT", "_DEDENT"):
        return _TOKEN_WORDS[token.type]
    return repr(str(token.value))


def _friendly(err: lark.exceptions.UnexpectedInput, source: Source) -> tuple[str, Loc]:
    text = source.text
    loc = Loc(err.line if err.line > 0 else 1, err.column if err.column > 0 else 1, source)
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        char = text[err.pos_in_stream] if err.pos_in_stream < len(text) else "?"
        if char == "_":
            return "names start with a letter", loc
        return f"unexpected character {char!r}", loc
    token = err.token
    expected = set(getattr(err, "expected", ()))
    got = _describe(token)
    opened = _lark().options.postlex.open
    if opened and (token.type == "$END" or token.line > opened[-1].line):
        bracket = opened[-1]
        return f"this '{bracket.value}' is never closed", _loc(bracket, source)
    if token.type == "$END":
        loc = _end_loc(source)
    if _in_for_header(err) and token.type not in ("_INDENT", "$END"):
        return "a for line ends with ':' (`for r in R:`)", loc
    if token.type == "EQUAL" and opened:
        return "'=' inside an expression: write '==' to compare", loc
    for close, word in (("RSQB", "']'"), ("RPAR", "')'")):
        if close in expected and token.type in ("RPAR", "RSQB", "EQUAL", "_NL", "$END"):
            return f"missing {word} before {got}", loc
    if token.type in ("_NL", "$END", "_DEDENT"):
        return "the statement is incomplete: an expression is missing", loc
    words = sorted({_TOKEN_WORDS.get(e) or f"'{_literal(e)}'" for e in expected})
    shown = ", ".join(words[:6]) + (", ..." if len(words) > 6 else "")
    return f"unexpected {got}; expected {shown}", loc


def _in_for_header(err) -> bool:
    """Whether the parser stopped between `for` and the ':' of its line."""
    state = getattr(getattr(err, "interactive_parser", None), "parser_state", None)
    types = [getattr(v, "type", None) for v in (state.value_stack if state else [])]
    after = types[len(types) - types[::-1].index("FOR"):] if "FOR" in types else []
    return after[:2] == ["NAME", "IN"] and len(after) > 2 and "COLON" not in after


def _literal(terminal: str) -> str:
    grammar = _lark()
    for t in grammar.terminals:
        if t.name == terminal:
            return getattr(t.pattern, "value", terminal)
    return terminal


def _end_loc(source: Source) -> Loc:
    lines = source.text.rstrip().splitlines() or [""]
    return Loc(len(lines), len(lines[-1]) + 1, source)


def parse(text: str, filename: str = "<string>") -> ast.Cell:
    """Parses the text of one spec. Raises RecError on a syntax error."""
    text = text.removeprefix("\ufeff")  # a byte order mark is not part of the spec
    source = Source(text, filename)
    with at(Loc(0, 0, source), "parse"):  # a failure outside the transformer: no node
        cell = _transform(text, source)
    return ast.Cell(cell.name, cell.hypers, cell.body, cell.loc, source)


def _transform(text: str, source: Source) -> ast.Cell:
    try:
        tree = _lark().parse(text)
        _check_limits(tree, source)
        return ToAst(source).transform(tree)
    except lark.exceptions.UnexpectedInput as err:
        message, loc = _friendly(err, source)
        raise RecError(message, source, loc) from None
    except _SyntaxProblem as err:
        raise RecError(err.message, source, err.loc) from None
    except _LayoutProblem as err:
        raise RecError(err.message, source, Loc(err.line, err.col, source)) from None
    except lark.exceptions.VisitError as err:
        if isinstance(err.orig_exc, _SyntaxProblem):
            raise RecError(err.orig_exc.message, source, err.orig_exc.loc) from None
        with at(_loc(getattr(err.obj, "meta", err.obj), source), "parse"):  # the rule's node
            raise err.orig_exc from None


def _check_limits(tree: lark.Tree, source: Source) -> None:
    """Refuses names longer than config.NAME_LENGTH and expressions nested deeper than
    config.DEPTH, before anything recursive (the transformer, the checks, the analysis)
    walks the tree. Iterative: the tree may be deeper than Python's recursion limit."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Token):
            if node.type == "NAME" and len(node) > config.NAME_LENGTH:
                raise _SyntaxProblem(f"the name {_clip(str(node))} is {len(node)} characters "
                                     f"long; names have at most {config.NAME_LENGTH}",
                                     _loc(node, source))
            continue
        if depth > config.DEPTH:
            raise _SyntaxProblem(f"the expression is nested more than {config.DEPTH} levels "
                                 "deep (brackets, calls or a chain of operators): split it "
                                 "into named parts (`a = ...`)", _loc(node.meta, source))
        inner = depth + (node.data in _EXPRESSIONS)
        stack.extend((child, inner) for child in node.children if child is not None)


# The rules that nest expressions: each counts one level towards config.DEPTH.
_EXPRESSIONS = {"add", "sub", "mul", "div", "floordiv", "mod", "pow", "neg", "pos", "compare",
                "call", "subscript"}
