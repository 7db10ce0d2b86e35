"""Query expressions: the REST `q` grammar and the Web Services field-level and `searchspec` grammars, parsed
into one small tree the store turns into SQL.

REST `q` ("Querying a Collection Resource" and "Supported Query Characters", OnDemRestAPI_Ref23/Ref25.html):

    QUERY EXPRESSION = FIELD EXPRESSION [; FIELD EXPRESSION]          ';' means AND
    FIELD EXPRESSION = <Field> <OPERATOR> <VALUE> [ANDOR CLAUSE]
    ANDOR CLAUSE     = <AND|OR> <OPERATOR> <VALUE> [ANDOR CLAUSE]

  operators `= < > <= >= LIKE`; literals in '...' or "..." with `\\` escaping the next character; `*` is the
  wildcard of LIKE; keywords (AND, OR, LIKE, TRUE, FALSE) are case-insensitive, field names and values are not;
  at most 4,096 characters; null values cannot be queried. Where the guide is silent the sandbox chooses (and
  docs/oracle.md says so): an ANDOR clause may omit its operator and then repeats the previous one (the guide's
  finder example writes `AccountName='PSKDemo02' OR 'A. C. Networks'`); AND binds tighter than OR; unquoted
  values are allowed for numbers and booleans.

Web Services v2.0 ("Query Syntax", c-Query-Syntax.html): a field element holds `op 'value'` terms joined by AND/OR
(parenthesised groups allowed), `IS NULL` / `IS NOT NULL`, operators `= ~= < <= > >= <> LIKE ~LIKE` (`~`:
case-insensitive); literals are single-quoted, a quote inside is doubled, `\\` escapes `*`, `?` and `\\`. A field
element holding text without an operator means `= 'text'` (sandbox choice). `searchspec` uses the same terms
with `[Field]` before each operator.

Values are converted to their storage encoding while parsing (dates in the user's time zone, picklist codes), so
the tree can be compiled to SQL without knowing which API it came from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, Union

from .errors import QUERY_SYNTAX, QUERY_TOO_LONG, UNKNOWN_FIELD, OracleError
from .model import Field, RecordType
from .values import Dialect

MAX_Q_LENGTH = 4096
REST_OPERATORS = ("<=", ">=", "=", "<", ">", "LIKE")
WS_OPERATORS = ("<=", ">=", "<>", "~=", "=", "<", ">", "~LIKE", "LIKE")


@dataclass(frozen=True)
class Comparison:
    field: str
    op: str  # = <> < <= > >= LIKE (value is a SQL LIKE pattern) IS NULL, IS NOT NULL
    value: Any = None
    case_insensitive: bool = False


@dataclass(frozen=True)
class Junction:
    op: str  # AND | OR
    items: tuple["Node", ...]


Node = Union[Comparison, Junction]


def conjunction(nodes: Sequence[Node | None], op: str = "AND") -> Node | None:
    present = [n for n in nodes if n is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else Junction(op, tuple(present))


# ---------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Token:
    kind: str  # op | literal | word | field | ( | ) | ;
    text: str
    chars: tuple[tuple[str, bool], ...] = ()  # literal characters with an escaped flag (for LIKE patterns)


class _Lexer:
    def __init__(self, text: str, operators: Sequence[str], *, quotes: str, doubled_quotes: bool) -> None:
        self.text, self.pos = text, 0
        self.operators, self.quotes, self.doubled = operators, quotes, doubled_quotes

    def tokens(self) -> list[Token]:
        out: list[Token] = []
        while True:
            self._skip_space()
            if self.pos >= len(self.text):
                return out
            out.append(self._next())

    def _skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _next(self) -> Token:
        text, ch = self.text, self.text[self.pos]
        if ch in self.quotes:
            return self._literal(ch)
        if ch in "();":
            self.pos += 1
            return Token(ch, ch)
        if ch == "[":
            end = text.find("]", self.pos)
            if end < 0:
                raise _syntax(f"unclosed '[' at position {self.pos + 1}")
            name, self.pos = text[self.pos + 1:end].strip(), end + 1
            return Token("field", name)
        upper = text[self.pos:self.pos + 5].upper()
        for op in self.operators:
            if upper.startswith(op) and (op[-1].isalpha() is False or not _word_char(text, self.pos + len(op))):
                self.pos += len(op)
                return Token("op", op)
        start = self.pos
        while self.pos < len(text) and (_word_char(text, self.pos) or text[self.pos] in ".-:+"):
            self.pos += 1
        if start == self.pos:
            raise _syntax(f"unexpected character {ch!r} at position {start + 1}")
        return Token("word", text[start:self.pos])

    def _literal(self, quote: str) -> Token:
        chars: list[tuple[str, bool]] = []
        self.pos += 1
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "\\" and self.pos + 1 < len(self.text):
                chars.append((self.text[self.pos + 1], True))
                self.pos += 2
                continue
            if ch == quote:
                if self.doubled and self.text[self.pos + 1:self.pos + 2] == quote:
                    chars.append((quote, True))
                    self.pos += 2
                    continue
                self.pos += 1
                return Token("literal", "".join(c for c, _ in chars), tuple(chars))
            chars.append((ch, False))
            self.pos += 1
        raise _syntax("a quoted value is not closed")


def _word_char(text: str, pos: int) -> bool:
    return pos < len(text) and (text[pos].isalnum() or text[pos] == "_")


def _syntax(reason: str) -> OracleError:
    return OracleError(QUERY_SYNTAX, reason)


# ---------------------------------------------------------------- shared term parsing


class _Parser:
    """Recursive descent over tokens; `value_for` turns a literal into a Comparison for the current field."""

    def __init__(self, tokens: list[Token], rt: RecordType, dialect: Dialect, *, question_mark: bool = False) -> None:
        self.tokens, self.i, self.rt, self.dialect = tokens, 0, rt, dialect
        self.question_mark = question_mark  # Web Services: '?' is LIKE's single-character wildcard

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise _syntax("the expression ends too early")
        self.i += 1
        return token

    def keyword(self, *words: str) -> str | None:
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.upper() in words:
            self.i += 1
            return token.text.upper()
        return None

    def expression(self, term: Callable[[], Node]) -> Node:
        """term ((AND|OR) term)* with AND binding tighter than OR."""
        groups: list[list[Node]] = [[term()]]
        while (word := self.keyword("AND", "OR")) is not None:
            if word == "OR":
                groups.append([])
            groups[-1].append(term())
        ors = [conjunction(g) for g in groups]
        return conjunction(ors, "OR")  # type: ignore[return-value]

    def comparison(self, field: Field, op: str) -> Comparison:
        if op in ("IS NULL", "IS NOT NULL"):
            return Comparison(field.name, op)
        token = self.take()
        insensitive = op.startswith("~")
        op = op.lstrip("~")
        if token.kind == "word" and token.text.upper() == "NULL":
            raise _syntax("null values cannot be queried; use IS NULL in Web Services queries")
        if token.kind not in ("literal", "word"):
            raise _syntax(f"expected a value after {op}, found {token.text!r}")
        if op == "LIKE":
            if field.type not in ("string", "picklist", "id"):
                raise _syntax(f"LIKE needs a text field; {field.name} is a {field.type}")
            chars = token.chars or tuple((c, False) for c in token.text)
            return Comparison(field.name, "LIKE", like_pattern(chars, self.question_mark),
                              insensitive or bool(field.ci_of))
        value = self.dialect.to_storage(self.rt, field, token.text, query=True)
        if value is None:
            raise _syntax(f"an empty value cannot be compared with {op}; null values cannot be queried")
        return Comparison(field.name, op, value, insensitive or bool(field.ci_of))

    def field(self, name: str) -> Field:
        field = self.rt.fields.get(name)
        if field is None:
            raise OracleError(UNKNOWN_FIELD, name, self.rt.name)
        return field

    def end(self) -> None:
        token = self.peek()
        if token is not None:
            raise _syntax(f"unexpected {token.text!r}")


def like_pattern(chars: Sequence[tuple[str, bool]], question_mark: bool = False) -> str:
    """SQL LIKE pattern (escape '\\') for a literal whose unescaped `*` (and, with `question_mark`, `?`) are the
    wildcards."""
    out = []
    for ch, escaped in chars:
        if ch == "*" and not escaped:
            out.append("%")
        elif ch == "?" and question_mark and not escaped:
            out.append("_")
        elif ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


# ---------------------------------------------------------------- REST q


def parse_rest_q(q: str, rt: RecordType, dialect: Dialect) -> Node | None:
    if len(q) > MAX_Q_LENGTH:
        raise OracleError(QUERY_TOO_LONG, len(q))
    if not q.strip():
        return None
    parser = _Parser(_Lexer(q, REST_OPERATORS, quotes="'\"", doubled_quotes=False).tokens(), rt, dialect)
    expressions = [_rest_field_expression(parser)]
    while (token := parser.peek()) is not None:
        if token.kind != ";":
            raise _syntax(f"expected ';' between field expressions, found {token.text!r}")
        parser.take()
        if parser.peek() is None:
            raise _syntax("';' must not end the expression")
        expressions.append(_rest_field_expression(parser))
    return conjunction(expressions)


def _rest_field_expression(parser: _Parser) -> Node:
    name = parser.take()
    if name.kind != "word":
        raise _syntax(f"expected a field name, found {name.text!r}")
    field = parser.field(name.text)
    last_op: list[str] = []

    def term() -> Node:
        token = parser.peek()
        if token is not None and token.kind == "op":
            parser.take()
            last_op[:] = [token.text]
        elif not last_op:
            raise _syntax(f"expected an operator after {field.name}")
        return parser.comparison(field, last_op[0])

    return parser.expression(term)


# ---------------------------------------------------------------- Web Services


def _ws_lexer(text: str) -> list[Token]:
    return _Lexer(text, WS_OPERATORS, quotes="'", doubled_quotes=True).tokens()


def parse_ws_field(text: str, field: Field, rt: RecordType, dialect: Dialect) -> Node | None:
    """The query inside one field element of a QueryPage request; None for an empty element."""
    if not text.strip():
        return None
    tokens = _ws_lexer(text)
    if len(tokens) == 1 and tokens[0].kind == "literal":
        tokens = [Token("op", "="), tokens[0]]
    elif tokens and tokens[0].kind not in ("op", "(") and not _is_null_start(tokens):
        tokens = [Token("op", "="), Token("literal", text.strip())]
    parser = _Parser(tokens, rt, dialect, question_mark=True)
    node = parser.expression(lambda: _ws_term(parser, field))
    parser.end()
    return node


def parse_searchspec(text: str, rt: RecordType, dialect: Dialect) -> Node | None:
    if not text.strip():
        return None
    parser = _Parser(_ws_lexer(text), rt, dialect, question_mark=True)
    node = parser.expression(lambda: _ws_term(parser, None))
    parser.end()
    return node


def _is_null_start(tokens: list[Token]) -> bool:
    return tokens[0].kind == "word" and tokens[0].text.upper() == "IS"


def _ws_term(parser: _Parser, field: Field | None) -> Node:
    token = parser.peek()
    if token is not None and token.kind == "(":
        parser.take()
        node = parser.expression(lambda: _ws_term(parser, field))
        if parser.take().kind != ")":
            raise _syntax("expected ')'")
        return node
    if field is None:  # searchspec: [Field] comes first
        name = parser.take()
        if name.kind != "field":
            raise _syntax(f"expected [Field], found {name.text!r}")
        return _ws_operator(parser, parser.field(name.text))
    return _ws_operator(parser, field)


def _ws_operator(parser: _Parser, field: Field) -> Node:
    if parser.keyword("IS"):
        negated = parser.keyword("NOT") is not None
        if parser.keyword("NULL") is None:
            raise _syntax("expected NULL after IS")
        return parser.comparison(field, "IS NOT NULL" if negated else "IS NULL")
    token = parser.take()
    if token.kind != "op":
        raise _syntax(f"expected an operator for {field.name}, found {token.text!r}")
    return parser.comparison(field, token.text)


def fields_in(node: Node | None) -> Iterator[str]:
    if node is None:
        return
    if isinstance(node, Comparison):
        yield node.field
    else:
        for item in node.items:
            yield from fields_in(item)
