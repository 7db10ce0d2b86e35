"""SOQL engine of the Salesforce sandbox: parse a query and run it against the sandbox's SQLite storage.

Pipeline: `tokenize` (hand-written scanner) -> `parse` (recursive descent, AST dataclasses below) ->
`_Compiler` (resolves names against the `Model`, type-checks literals, emits parameterised SQLite SQL) ->
`execute` (runs it and shapes REST records). Storage encodings are those documented in `model.py`.

Supported subset:

* ``SELECT <items> FROM <object> [WHERE <condition>] [ORDER BY <items>] [LIMIT n] [OFFSET n]``. Keywords,
  object and field names are case-insensitive; any whitespace (newlines, tabs, runs of spaces) separates tokens.
* Select items: fields; relationship paths of any depth (``Account.Owner.Name``), polymorphic references
  included (every referenced object present in the model is joined); formula fields (``FieldDef.formula_sql``,
  evaluated in a per-object subquery); compound address fields (REST: a nested dict, ``null`` when every
  component is null); or ``COUNT()`` alone (``total_size`` = the count, no records).
* WHERE: ``AND`` / ``OR`` (mixing them needs parentheses, as on Salesforce), ``NOT``, parentheses, and
  ``<path> = != <> < <= > >= LIKE IN NOT IN INCLUDES EXCLUDES <value(s)>``.
* Literals: ``'strings'`` with backslash escapes, numbers, ``true``/``false``, ``null``, dates ``YYYY-MM-DD``,
  datetimes ``YYYY-MM-DDThh:mm:ss[.f{1,6}](Z|+hh:mm|-hh:mm)`` (a space in place of the '+' is accepted, as when
  a client forgets to URL-encode it), and the date literals of `_DATE_UNITS` / `_N_LITERALS`
  (TODAY, LAST_N_DAYS:n, THIS_MONTH, LAST_YEAR, N_DAYS_AGO:n, ...), resolved in UTC relative to ``now``.
* ORDER BY fields or paths, ASC/DESC, NULLS FIRST/LAST (defaults ASC NULLS FIRST, DESC NULLS LAST).

Salesforce semantics kept: text ``=``/``LIKE``/ordering are case-insensitive (Unicode casefold); null is a
value (``!=``, ``NOT IN``, ``EXCLUDES`` and ``NOT`` match null fields); 15-character Id literals match their
18-character ids; date literals are ranges (``= TODAY`` is the whole day, ``> TODAY`` after it); sub-millisecond
datetime literals compare exactly against millisecond storage; literals are type-checked against fields;
soft-deleted rows (``IsDeleted``) are hidden unless ``include_deleted`` (queryAll); errors carry Salesforce's
error codes and caret messages. Every literal reaches SQLite as a bound parameter.

Not supported (MALFORMED_QUERY, like any unknown syntax): aggregates other than ``COUNT()`` (``COUNT(Id)``,
``SUM``...), GROUP BY / HAVING, subqueries and semi-joins, TYPEOF, object aliases, ``FIELDS()``, WITH, FOR
VIEW/UPDATE, USING SCOPE, SOQL functions (toLabel, FORMAT, convertCurrency...), fiscal and hour literals,
bind variables.
"""
from __future__ import annotations

import functools
import json
import operator
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Callable, Iterator, Union

from .encoding import normalize_id
from .model import FieldDef, Model, ObjectDef

# ------------------------------------------------------------------------------------------------- errors


class SoqlError(Exception):
    """A query Salesforce refuses with HTTP 400; `error_code` and `message` form the JSON error body."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


def _located(code: str, soql: str, pos: int, text: str) -> SoqlError:
    """Salesforce's located error: the offending line, a caret under `pos`, 'ERROR at Row:r:Column:c', text."""
    line_start = soql.rfind("\n", 0, pos) + 1
    line_end = soql.find("\n", pos)
    line = soql[line_start:line_end if line_end != -1 else len(soql)].rstrip("\r")
    row, col = soql.count("\n", 0, pos) + 1, pos - line_start + 1
    return SoqlError(code, f"\n{line}\n{' ' * (col - 1)}^\nERROR at Row:{row}:Column:{col}\n{text}")


# ------------------------------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Token:
    kind: str  # IDENT STRING NUMBER DATE DATETIME OP PUNCT OTHER ERROR EOF
    text: str  # the source text of the token
    pos: int  # offset in the query
    value: object = None  # STRING: decoded text; NUMBER: int|float; DATE: date; DATETIME: aware UTC datetime;
    #                       ERROR: the SoqlError of a bad string literal (raised when the parser reaches it)
    pattern: str | None = None  # STRING: the text as a LIKE pattern (escaped % _ \ kept as \% \_ \\)


_IDENT_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_IDENT_CHARS = _IDENT_START | frozenset("0123456789")
_DIGITS = frozenset("0123456789")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "'": "'", '"': '"'}
_ESCAPES |= {k.upper(): v for k, v in _ESCAPES.items() if k.isalpha()}
# Anchored patterns for single literal lexemes (matched at the scanner's position, never over the query).
_DATETIME_RE = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?(?:[Zz]|([+\- ])(\d\d):?(\d\d))(?![\w:.])")
_DATE_RE = re.compile(r"(\d{4})-(\d\d)-(\d\d)(?![\w:.+\-])")
_DATE_LIKE_RE = re.compile(r"\d{4}-\d[\w:.+\-]*")
_NUMBER_RE = re.compile(r"[+-]?\d+(?:\.\d+)?")


def tokenize(soql: str) -> list[Token]:
    """Split a query into tokens; the last one is EOF, placed right after the last real token. A bad string
    literal ends the list with an ERROR token, so that errors are reported in source order."""
    tokens: list[Token] = []
    i, n = 0, len(soql)
    while True:
        while i < n and soql[i].isspace():
            i += 1
        if i >= n:
            break
        c = soql[i]
        if c in _IDENT_START:
            j = i + 1
            while j < n and soql[j] in _IDENT_CHARS:
                j += 1
            tok = Token("IDENT", soql[i:j], i)
        elif c in _DIGITS or (c in "+-" and i + 1 < n and soql[i + 1] in _DIGITS):
            tok = _scan_number(soql, i)
        elif c == "'":
            try:
                tok = _scan_string(soql, i)
            except SoqlError as error:
                tokens.append(Token("ERROR", soql[i:], i, error))
                break
        elif soql.startswith(("!=", "<>", "<=", ">="), i):
            tok = Token("OP", soql[i:i + 2], i)
        elif c in "=<>":
            tok = Token("OP", c, i)
        elif c in ",().:":
            tok = Token("PUNCT", c, i)
        else:
            tok = Token("OTHER", c, i)
        tokens.append(tok)
        i = tok.pos + len(tok.text)
    end = tokens[-1].pos + len(tokens[-1].text) if tokens else 0
    tokens.append(Token("EOF", "", end))
    return tokens


def _scan_number(soql: str, i: int) -> Token:
    """A datetime, date or number literal; a malformed date-like lexeme becomes an OTHER token."""
    if soql[i] in _DIGITS:
        if m := _DATETIME_RE.match(soql, i):
            dt = _make_datetime(m)
            return Token("DATETIME" if dt else "OTHER", m.group(0), i, dt)
        if m := _DATE_RE.match(soql, i):
            try:
                d = date(int(m[1]), int(m[2]), int(m[3]))
            except ValueError:
                return Token("OTHER", m.group(0), i)
            return Token("DATE", m.group(0), i, d)
        if m := _DATE_LIKE_RE.match(soql, i):
            return Token("OTHER", m.group(0), i)
    text = _NUMBER_RE.match(soql, i).group(0)  # type: ignore[union-attr]  # caller saw a digit
    return Token("NUMBER", text, i, float(text) if "." in text else int(text))


def _make_datetime(m: re.Match[str]) -> datetime | None:
    year, month, day, hour, minute, second, frac, sign, off_h, off_m = m.groups()
    try:
        offset = timedelta(hours=int(off_h), minutes=int(off_m)) if sign else timedelta(0)
        local = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                         int((frac or "0").ljust(6, "0")), tzinfo=timezone(-offset if sign == "-" else offset))
        return local.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _scan_string(soql: str, start: int) -> Token:
    plain: list[str] = []
    pattern: list[str] = []
    j, n = start + 1, len(soql)
    while j < n:
        c = soql[j]
        if c == "'":
            return Token("STRING", soql[start:j + 1], start, "".join(plain), "".join(pattern))
        if c != "\\":
            plain.append(c)
            pattern.append(c)
            j += 1
            continue
        e = soql[j + 1] if j + 1 < n else ""
        if e in ("%", "_", "\\"):
            plain.append(e)
            pattern.append("\\" + e)
        elif e in _ESCAPES:
            plain.append(_ESCAPES[e])
            pattern.append(_ESCAPES[e])
        else:
            raise _located("MALFORMED_QUERY", soql, start,
                           f"Invalid string literal '{soql[start + 1:j + 2]}'. "
                           f"Illegal character sequence '\\{e}' in string literal.")
        j += 2
    raise _located("MALFORMED_QUERY", soql, start, "mismatched character '<EOF>' expecting '''")


# ------------------------------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class FieldRef:
    parts: tuple[str, ...]  # relationship names then the field name, as typed
    pos: int


@dataclass(frozen=True)
class CountAll:
    pos: int


@dataclass(frozen=True)
class Literal:
    kind: str  # string number boolean null date datetime date_literal
    value: object  # str | int | float | bool | None | date | datetime | date-literal name (upper case)
    pos: int
    pattern: str | None = None  # string: LIKE form
    n: int | None = None  # date_literal: the N of LAST_N_DAYS:N


@dataclass(frozen=True)
class Comparison:
    field: FieldRef
    op: str  # = != < <= > >= LIKE IN "NOT IN" INCLUDES EXCLUDES
    values: tuple[Literal, ...]


@dataclass(frozen=True)
class BoolOp:
    op: str  # AND | OR
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    item: Condition


Condition = Union[Comparison, BoolOp, Not]


@dataclass(frozen=True)
class OrderItem:
    field: FieldRef
    descending: bool
    nulls_first: bool


@dataclass(frozen=True)
class Query:
    text: str
    select: tuple[FieldRef | CountAll, ...]
    object_name: str
    object_pos: int
    where: Condition | None
    order_by: tuple[OrderItem, ...]
    limit: int | None
    offset: int | None

    @property
    def is_count(self) -> bool:
        return isinstance(self.select[0], CountAll)


# ------------------------------------------------------------------------------------------------- parser

# SOQL reserved words: never a field or object name.
_RESERVED = frozenset({"AND", "ASC", "DESC", "EXCLUDES", "FIRST", "FROM", "GROUP", "HAVING", "IN", "INCLUDES",
                       "LAST", "LIKE", "LIMIT", "NOT", "NULL", "NULLS", "OR", "SELECT", "WHERE", "WITH"})
_DATE_UNITS = {"DAY": "DAYS", "WEEK": "WEEKS", "MONTH": "MONTHS", "QUARTER": "QUARTERS", "YEAR": "YEARS"}
# Date literals without N: name -> (unit, periods from the current one).
_FIXED_LITERALS = {"YESTERDAY": ("DAY", -1), "TODAY": ("DAY", 0), "TOMORROW": ("DAY", 1)} | {
    f"{word}_{unit}": (unit, k) for unit in ("WEEK", "MONTH", "QUARTER", "YEAR")
    for word, k in (("LAST", -1), ("THIS", 0), ("NEXT", 1))}
# Date literals taking ':n': name -> (LAST | NEXT | AGO, unit).
_N_LITERALS = {f"{kind}_N_{plural}": (kind, unit) for unit, plural in _DATE_UNITS.items() for kind in ("LAST", "NEXT")}
_N_LITERALS |= {f"N_{plural}_AGO": ("AGO", unit) for unit, plural in _DATE_UNITS.items()}
_ALIASED_LITERALS = {"LAST_90_DAYS": ("LAST_N_DAYS", 90), "NEXT_90_DAYS": ("NEXT_N_DAYS", 90)}
_COMPARISON_OPS = {"=": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_MAX_OFFSET = 2000
# Limits (SOQL and SOSL Limits for Search Queries, https://developer.salesforce.com/docs/atlas.en-us.
# salesforce_app_limits_cheatsheet.meta/salesforce_app_limits_cheatsheet/salesforce_app_limits_platform_soslsoql.htm;
# Relationship Query Limitations in the SOQL guide). The error codes and texts are the sandbox's choice where the
# docs give none (docs/salesforce.md).
MAX_QUERY_LENGTH = 100_000  # characters in a SOQL statement
MAX_WHERE_STRING = 4_000  # characters in each string literal of a WHERE clause
MAX_RELATIONSHIP_DEPTH = 5  # child-to-parent relationship levels in one path (Contact.Account.Owner... )
MAX_NESTING = 100  # parentheses / NOT nesting in WHERE: a guard for the recursive parser
_IN_LIST_INLINE = 500  # longer IN lists reach SQLite as one JSON parameter (SQLite caps bound variables)


def parse(soql: str) -> Query:
    """Parse a SOQL query; raises SoqlError('MALFORMED_QUERY', ...) on anything outside the supported grammar."""
    if len(soql) > MAX_QUERY_LENGTH:
        raise SoqlError("MALFORMED_QUERY", f"Query is too long: SOQL statements cannot exceed {MAX_QUERY_LENGTH} "
                        f"characters (this one has {len(soql)})")
    return _Parser(soql).query()


class _Parser:
    def __init__(self, soql: str) -> None:
        self.soql = soql
        self.tokens = tokenize(soql)
        self.i = 0
        self.depth = 0  # current parentheses / NOT nesting in WHERE

    # token helpers
    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        tok = self.peek()
        if tok.kind == "ERROR":
            raise tok.value  # type: ignore[misc]
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return tok

    def at_keyword(self, *words: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind == "IDENT" and tok.text.upper() in words

    def accept_keyword(self, word: str) -> bool:
        if self.at_keyword(word):
            self.advance()
            return True
        return False

    def expect_keyword(self, word: str) -> Token:
        if not self.at_keyword(word):
            raise self.unexpected(self.peek())
        return self.advance()

    def at_punct(self, char: str) -> bool:
        tok = self.peek()
        return tok.kind == "PUNCT" and tok.text == char

    def expect_punct(self, char: str) -> Token:
        if not self.at_punct(char):
            raise self.unexpected(self.peek())
        return self.advance()

    def name(self) -> Token:
        tok = self.advance()
        if tok.kind != "IDENT" or tok.text.upper() in _RESERVED:
            raise self.unexpected(tok)
        return tok

    def unexpected(self, tok: Token) -> SoqlError:
        if tok.kind == "ERROR":
            return tok.value  # type: ignore[return-value]
        shown = "<EOF>" if tok.kind == "EOF" else f"'{tok.text}'"
        return _located("MALFORMED_QUERY", self.soql, tok.pos, f"unexpected token: {shown}")

    # grammar
    def query(self) -> Query:
        self.expect_keyword("SELECT")
        select = self.select_list()
        self.expect_keyword("FROM")
        obj = self.name()
        where = self.condition() if self.accept_keyword("WHERE") else None
        order_by: tuple[OrderItem, ...] = ()
        if self.at_keyword("ORDER") and self.at_keyword("BY", ahead=1):
            self.i += 2
            order_by = self.order_list()
        limit = self.count_value() if self.accept_keyword("LIMIT") else None
        offset = None
        if self.at_keyword("OFFSET"):
            self.advance()
            offset_tok = self.peek()
            offset = self.count_value()
            if offset > _MAX_OFFSET:
                raise _located("NUMBER_OUTSIDE_VALID_RANGE", self.soql, offset_tok.pos,
                               f"Maximum SOQL offset allowed is {_MAX_OFFSET}")
        if self.peek().kind != "EOF":
            raise self.unexpected(self.peek())
        return Query(self.soql, select, obj.text, obj.pos, where, order_by, limit, offset)

    def select_list(self) -> tuple[FieldRef | CountAll, ...]:
        if self.at_keyword("COUNT") and self.peek(1).text == "(":
            count = self.advance()
            self.advance()
            if not self.at_punct(")"):
                raise _located("MALFORMED_QUERY", self.soql, count.pos,
                               "Only COUNT() is supported by this sandbox; COUNT(field) and other aggregate "
                               "functions are not.")
            self.advance()
            return (CountAll(count.pos),)
        items = [self.field_ref()]
        while self.at_punct(","):
            self.advance()
            items.append(self.field_ref())
        return tuple(items)

    def field_ref(self) -> FieldRef:
        first = self.name()
        parts = [first.text]
        while self.at_punct("."):
            self.advance()
            parts.append(self.name().text)
        if len(parts) - 1 > MAX_RELATIONSHIP_DEPTH:
            raise _located("MALFORMED_QUERY", self.soql, first.pos,
                           f"A relationship path can traverse at most {MAX_RELATIONSHIP_DEPTH} child-to-parent "
                           f"relationships; {'.'.join(parts)} traverses {len(parts) - 1}")
        return FieldRef(tuple(parts), first.pos)

    def condition(self) -> Condition:
        first = self.unary()
        if not self.at_keyword("AND", "OR"):
            return first
        op = self.peek().text.upper()
        items = [first]
        while self.accept_keyword(op):
            items.append(self.unary())
        if self.at_keyword("AND", "OR"):  # AND and OR mixed without parentheses
            raise self.unexpected(self.peek())
        return BoolOp(op, tuple(items))

    def unary(self) -> Condition:
        if self.at_keyword("NOT") or self.at_punct("("):
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise _located("MALFORMED_QUERY", self.soql, self.peek().pos,
                               f"The WHERE clause is nested too deeply (more than {MAX_NESTING} levels)")
            try:
                if self.accept_keyword("NOT"):
                    return Not(self.unary())
                self.advance()
                inner = self.condition()
                self.expect_punct(")")
                return inner
            finally:
                self.depth -= 1
        return self.comparison()

    def comparison(self) -> Comparison:
        ref = self.field_ref()
        tok = self.advance()
        if tok.kind == "OP":
            return Comparison(ref, _COMPARISON_OPS[tok.text], (self.value(),))
        word = tok.text.upper() if tok.kind == "IDENT" else ""
        if word == "LIKE":
            return Comparison(ref, "LIKE", (self.value(),))
        if word in ("IN", "INCLUDES", "EXCLUDES"):
            return Comparison(ref, word, self.value_list())
        if word == "NOT":
            self.expect_keyword("IN")
            return Comparison(ref, "NOT IN", self.value_list())
        raise self.unexpected(tok)

    def value_list(self) -> tuple[Literal, ...]:
        self.expect_punct("(")
        values = [self.value()]
        while self.at_punct(","):
            self.advance()
            values.append(self.value())
        self.expect_punct(")")
        return tuple(values)

    def value(self) -> Literal:
        tok = self.advance()
        simple = {"STRING": "string", "NUMBER": "number", "DATE": "date", "DATETIME": "datetime"}
        if tok.kind in simple:
            if tok.kind == "STRING" and len(tok.value) > MAX_WHERE_STRING:  # type: ignore[arg-type]
                raise _located("MALFORMED_QUERY", self.soql, tok.pos, f"String literal too long: each string in a "
                               f"WHERE clause can have at most {MAX_WHERE_STRING} characters")
            return Literal(simple[tok.kind], tok.value, tok.pos, tok.pattern)
        if tok.kind == "PUNCT" and tok.text == ":" and self.peek().kind == "IDENT":
            raise _located("MALFORMED_QUERY", self.soql, tok.pos, "Bind variables only allowed in Apex code")
        word = tok.text.upper() if tok.kind == "IDENT" else ""
        if word in ("TRUE", "FALSE"):
            return Literal("boolean", word == "TRUE", tok.pos)
        if word == "NULL":
            return Literal("null", None, tok.pos)
        if word in _FIXED_LITERALS:
            return Literal("date_literal", word, tok.pos)
        if word in _ALIASED_LITERALS:
            name, n = _ALIASED_LITERALS[word]
            return Literal("date_literal", name, tok.pos, n=n)
        if word in _N_LITERALS:
            self.expect_punct(":")
            return Literal("date_literal", word, tok.pos, n=self.count_value())
        raise self.unexpected(tok)

    def count_value(self) -> int:
        tok = self.advance()
        if tok.kind != "NUMBER" or not isinstance(tok.value, int) or not tok.text[0].isdigit():
            raise self.unexpected(tok)
        return tok.value

    def order_list(self) -> tuple[OrderItem, ...]:
        items = [self.order_item()]
        while self.at_punct(","):
            self.advance()
            items.append(self.order_item())
        return tuple(items)

    def order_item(self) -> OrderItem:
        ref = self.field_ref()
        descending = False
        if self.at_keyword("ASC", "DESC"):
            descending = self.advance().text.upper() == "DESC"
        nulls_first = not descending
        if self.accept_keyword("NULLS"):
            if not self.at_keyword("FIRST", "LAST"):
                raise self.unexpected(self.peek())
            nulls_first = self.advance().text.upper() == "FIRST"
        return OrderItem(ref, descending, nulls_first)


# ------------------------------------------------------------------------------------------------- literals


def _format_datetime(dt: datetime) -> str:
    """The storage form of an aware datetime, truncated to milliseconds: 'YYYY-MM-DDTHH:MM:SS.fff+0000'."""
    dt = dt.astimezone(UTC)
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
            f".{dt.microsecond // 1000:03d}+0000")


def _add_periods(unit: str, start: date, k: int) -> date:
    if unit in ("DAY", "WEEK"):
        return start + timedelta(days=k * (7 if unit == "WEEK" else 1))
    months = start.year * 12 + start.month - 1 + k * {"MONTH": 1, "QUARTER": 3, "YEAR": 12}[unit]
    return date(months // 12, months % 12 + 1, 1)


def _period_start(unit: str, today: date) -> date:
    if unit == "DAY":
        return today
    if unit == "WEEK":  # weeks start on Sunday (en_US locale)
        return today - timedelta(days=(today.weekday() + 1) % 7)
    month = {"MONTH": today.month, "QUARTER": 3 * ((today.month - 1) // 3) + 1, "YEAR": 1}[unit]
    return date(today.year, month, 1)


def _date_range(name: str, n: int | None, today: date) -> tuple[date, date]:
    """The [start, end) days a date literal covers, as Salesforce defines them."""
    if name in _FIXED_LITERALS:
        unit, k = _FIXED_LITERALS[name]
        start = _add_periods(unit, _period_start(unit, today), k)
        return start, _add_periods(unit, start, 1)
    kind, unit = _N_LITERALS[name]
    count = n or 0
    current = _period_start(unit, today)
    if kind == "LAST":  # LAST_N_DAYS includes today; the other LAST_N_* end with the previous period
        end = today + timedelta(days=1) if unit == "DAY" else current
        return _add_periods(unit, current, -count), end
    if kind == "NEXT":
        start = _add_periods(unit, current, 1)
        return start, _add_periods(unit, start, count)
    start = _add_periods(unit, current, -count)  # N_<unit>_AGO
    return start, _add_periods(unit, start, 1)


# ------------------------------------------------------------------------------------------------- compiler

_TEXT_TYPES = frozenset({"string", "picklist", "textarea", "phone", "url", "email", "combobox", "encryptedstring"})
_NUMBER_TYPES = frozenset({"int", "long", "double", "currency", "percent"})
_ACCEPTED_KINDS = {"text": {"string"}, "multi": {"string"}, "id": {"string"}, "boolean": {"boolean"},
                   "number": {"number"}, "date": {"date", "date_literal"}, "datetime": {"datetime", "date_literal"}}
_ADDRESS_KEYS = (("PostalCode", "postalCode"), ("StateCode", "stateCode"), ("CountryCode", "countryCode"),
                 ("GeocodeAccuracy", "geocodeAccuracy"), ("Street", "street"), ("City", "city"),
                 ("State", "state"), ("Country", "country"), ("Latitude", "latitude"), ("Longitude", "longitude"))
_ADDRESS_BASE = ("city", "country", "geocodeAccuracy", "latitude", "longitude", "postalCode", "state", "street")
_NO_SUCH_COLUMN = ("No such column '{name}' on entity '{entity}'. If you are attempting to use a custom field, be "
                   "sure to append the '__c' after the custom field name. Please reference your WSDL or the "
                   "describe call for the appropriate names.")
_NO_RELATIONSHIP = ("Didn't understand relationship '{name}' in field path. If you are attempting to use a custom "
                    "relationship, be sure to append the '__r' after the custom relationship name. Please "
                    "reference your WSDL or the describe call for the appropriate names.")
_NO_OBJECT = ("sObject type '{name}' is not supported. If you are attempting to use a custom object, be sure to "
              "append the '__c' after the entity name. Please reference your WSDL or the describe call for the "
              "appropriate names.")


def _family(ftype: str) -> str:
    if ftype in _TEXT_TYPES:
        return "text"
    if ftype in _NUMBER_TYPES:
        return "number"
    return {"multipicklist": "multi", "id": "id", "reference": "id", "boolean": "boolean",
            "date": "date", "datetime": "datetime"}.get(ftype, "other")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _coalesce(exprs: list[str]) -> str:
    return exprs[0] if len(exprs) == 1 else f"COALESCE({', '.join(exprs)})"


def _to_json(fd: FieldDef, value: object) -> object:
    """A stored SQLite value as it appears in a REST record."""
    if value is None:
        return None
    if fd.type == "boolean":
        return bool(value)
    if fd.type in ("int", "long"):
        return int(value)  # type: ignore[call-overload]
    if fd.type in _NUMBER_TYPES:
        return float(value)  # type: ignore[arg-type]
    return value


@dataclass
class _Node:
    """A row source: the root object, or the parent(s) reached through a relationship path (several objects when
    the reference is polymorphic; ids are unique across objects, so at most one of them matches a row)."""
    targets: list[tuple[ObjectDef, str]]  # (object, SQL alias)
    path: tuple[str, ...]  # canonical relationship names from the root

    def id_expr(self) -> str:
        return _coalesce([f'{alias}."Id"' for _, alias in self.targets])

    def type_expr(self) -> str | None:
        if len(self.targets) == 1:
            return None
        whens = " ".join(f'WHEN {alias}."Id" IS NOT NULL THEN {_sql_string(obj.name)}' for obj, alias in self.targets)
        return f"CASE {whens} END"


@dataclass
class _FieldOut:
    col: int
    field: FieldDef

    def value(self, row: tuple, base: str) -> object:
        return _to_json(self.field, row[self.col])


@dataclass
class _CompoundOut:
    parts: list[tuple[str, int, FieldDef]]  # (address key, column, component field)

    def value(self, row: tuple, base: str) -> dict | None:
        out: dict[str, object] = {key: None for key in _ADDRESS_BASE}
        for key, col, fd in self.parts:
            out[key] = _to_json(fd, row[col])
        return out if any(v is not None for v in out.values()) else None


@dataclass
class _Shape:
    """How one (sub)record is assembled from a result row."""
    id_col: int
    type_col: int | None
    type_name: str
    entries: dict[str, _Shape | _FieldOut | _CompoundOut] = field(default_factory=dict)

    def value(self, row: tuple, base: str) -> dict | None:
        record_id = row[self.id_col]
        if record_id is None:
            return None
        rtype = row[self.type_col] if self.type_col is not None else self.type_name
        record: dict[str, object] = {"attributes": {"type": rtype, "url": f"{base}/{rtype}/{record_id}"}}
        for key, entry in self.entries.items():
            record[key] = entry.value(row, base)
        return record

    def reader(self, path: list[str], base: str) -> Callable[[tuple], object]:
        """Reads the flat column `path` (e.g. ['Account', 'Name']) from a result row as it is in the record
        `value` makes of that row: None when a relationship on the way is empty, booleans as 'true'/'false',
        compound values as JSON text."""
        shape, guards = self, []
        for key in path[:-1]:
            entry = shape.entries.get(key)
            if not isinstance(entry, _Shape):
                return lambda row: None
            shape = entry
            guards.append(entry.id_col)
        last = shape.entries.get(path[-1])
        if last is None:
            return lambda row: None
        if isinstance(last, _FieldOut):
            read = _flat_reader(last)
        else:
            read = lambda row: _flat_value(last.value(row, base))  # noqa: E731 (compound or relationship)
        if not guards:
            return read
        return lambda row: None if any(row[g] is None for g in guards) else read(row)


def _flat_reader(out: _FieldOut) -> Callable[[tuple], object]:
    """`_flat_value(_to_json(field, row[col]))`, specialised by type once per column (hot in Bulk queries)."""
    col, kind = out.col, out.field.type
    if kind == "boolean":
        return lambda row: None if row[col] is None else ("true" if row[col] else "false")
    if kind in ("int", "long"):
        return lambda row: None if row[col] is None else int(row[col])
    if kind in _NUMBER_TYPES:
        return lambda row: None if row[col] is None else float(row[col])
    return operator.itemgetter(col)


def _flat_value(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value)
    return value


@dataclass
class _Plan:
    sql: str
    params: dict[str, object]
    object_name: str
    shape: _Shape | None  # None for COUNT()
    columns: list[str]
    compound_fields: list[str]


class _Compiler:
    def __init__(self, model: Model, query: Query, now: datetime, include_deleted: bool) -> None:
        self.model, self.q, self.include_deleted = model, query, include_deleted
        self.today = now.astimezone(UTC).date() if now.tzinfo else now.date()
        self.params: dict[str, object] = {}
        self.nodes: dict[tuple[str, ...], _Node] = {}
        self.joins: list[tuple[str, ObjectDef, str]] = []  # (alias, object, ON condition)
        self.formulas: dict[str, dict[str, FieldDef]] = {}  # alias -> formula fields its source must compute
        self.select_sql: list[str] = []

    def error(self, code: str, pos: int, text: str) -> SoqlError:
        return _located(code, self.q.text, pos, text)

    def param(self, value: object) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return ":" + name

    def column(self, expr: str) -> int:
        if expr not in self.select_sql:
            self.select_sql.append(expr)
        return self.select_sql.index(expr)

    # ---- plan
    def compile(self) -> _Plan:
        q = self.q
        obj = self.model.object(q.object_name)
        if obj is None:
            raise self.error("INVALID_TYPE", q.object_pos, _NO_OBJECT.format(name=q.object_name))
        self.root = self.nodes[()] = _Node([(obj, "t0")], ())
        shape, columns, compound = None, [], []
        if not q.is_count:
            shape, columns, compound = self.select(q.select)  # type: ignore[arg-type]
        where = ['t0."IsDeleted" = 0'] if not self.include_deleted and obj.field("IsDeleted") else []
        if q.where is not None:
            where.append(self.condition(q.where))
        order = self.order_by(q.order_by)
        sql = "FROM " + self.sources()
        if where:
            sql += " WHERE " + " AND ".join(where)
        if order and not q.is_count:
            sql += " ORDER BY " + ", ".join(order)
        if q.limit is not None or q.offset is not None:
            sql += f" LIMIT {self.param(-1 if q.limit is None else q.limit)} OFFSET {self.param(q.offset or 0)}"
        sql = f"SELECT COUNT(*) FROM (SELECT 1 {sql})" if q.is_count else f"SELECT {', '.join(self.select_sql)} {sql}"
        return _Plan(sql, self.params, obj.name, shape, columns, compound)

    def sources(self) -> str:
        def source(alias: str, obj: ObjectDef) -> str:
            formulas = self.formulas.get(alias)
            if not formulas:
                return f"{_quote(obj.name)} AS {alias}"
            computed = ", ".join(f"({fd.formula_sql}) AS {_quote(fd.name)}" for fd in formulas.values())
            return f"(SELECT *, {computed} FROM {_quote(obj.name)}) AS {alias}"

        sql = source("t0", self.root.targets[0][0])
        for alias, obj, on in self.joins:
            sql += f" LEFT JOIN {source(alias, obj)} ON {on}"
        return sql

    # ---- names
    def resolve(self, ref: FieldRef) -> tuple[_Node, FieldDef]:
        node = self.root
        for name in ref.parts[:-1]:
            node = self.relationship(node, name, ref.pos)
        name = ref.parts[-1]
        for obj, _ in node.targets:
            if fd := obj.field(name):
                return node, fd
        raise self.error("INVALID_FIELD", ref.pos, _NO_SUCH_COLUMN.format(name=name, entity=node.targets[0][0].name))

    def relationship(self, node: _Node, name: str, pos: int) -> _Node:
        refs = [(alias, fd) for obj, alias in node.targets if (fd := obj.relationship(name))]
        if not refs:
            raise self.error("INVALID_FIELD", pos, _NO_RELATIONSHIP.format(name=name))
        path = node.path + (refs[0][1].relationship_name or name,)
        if path in self.nodes:
            return self.nodes[path]
        targets: list[ObjectDef] = []
        for _, fd in refs:
            for target_name in fd.reference_to:
                target = self.model.object(target_name)
                if target and all(t.name != target.name for t in targets):
                    targets.append(target)
        if not targets:
            raise self.error("INVALID_FIELD", pos, _NO_RELATIONSHIP.format(name=name))
        fk = _coalesce([f"{alias}.{_quote(fd.name)}" for alias, fd in refs])
        child = _Node([], path)
        for target in targets:
            alias = f"t{len(self.joins) + 1}"
            self.joins.append((alias, target, f'{alias}."Id" = {fk}'))
            child.targets.append((target, alias))
        self.nodes[path] = child
        return child

    def expr(self, node: _Node, fd: FieldDef) -> str:
        """SQL for a (non-compound) field of a node; formula fields come from the alias's computing subquery."""
        exprs = []
        for obj, alias in node.targets:
            own = obj.field(fd.name)
            if own is None or own.compound_of:
                continue
            if own.formula_sql is not None:
                self.formulas.setdefault(alias, {})[own.name] = own
            exprs.append(f"{alias}.{_quote(own.name)}")
        return _coalesce(exprs)

    # ---- SELECT
    def select(self, items: tuple[FieldRef, ...]) -> tuple[_Shape, list[str], list[str]]:
        root_shape = self.shape(self.root)
        columns: list[str] = []
        compound: list[str] = []
        for ref in items:
            node, fd = self.resolve(ref)
            shape = root_shape
            for depth in range(1, len(node.path) + 1):
                sub = shape.entries.get(node.path[depth - 1])
                if not isinstance(sub, _Shape):
                    sub = shape.entries[node.path[depth - 1]] = self.shape(self.nodes[node.path[:depth]])
                shape = sub
            if fd.name in shape.entries:
                raise SoqlError("INVALID_FIELD", f"duplicate field selected: {fd.name}")
            name = ".".join(node.path + (fd.name,))
            if fd.compound_of:
                shape.entries[fd.name] = self.compound(node, fd)
                compound.append(name)
            else:
                shape.entries[fd.name] = _FieldOut(self.column(self.expr(node, fd)), fd)
            columns.append(name)
        return root_shape, columns, compound

    def shape(self, node: _Node) -> _Shape:
        type_expr = node.type_expr()
        type_col = self.column(type_expr) if type_expr else None
        return _Shape(self.column(node.id_expr()), type_col, node.targets[0][0].name)

    def compound(self, node: _Node, fd: FieldDef) -> _CompoundOut:
        parts = []
        for component_name in fd.compound_of:
            component = next((f for obj, _ in node.targets if (f := obj.field(component_name))), None)
            if component is None or component.compound_of:
                continue
            key = next((k for suffix, k in _ADDRESS_KEYS if component.name.endswith(suffix)),
                       component.name[:1].lower() + component.name[1:])
            parts.append((key, self.column(self.expr(node, component)), component))
        return _CompoundOut(parts)

    # ---- ORDER BY
    def order_by(self, items: tuple[OrderItem, ...]) -> list[str]:
        terms: list[str] = []
        for item in items:
            node, fd = self.resolve(item.field)
            family = _family(fd.type)
            if fd.compound_of or family == "multi":
                raise self.error("INVALID_FIELD", item.field.pos,
                                 f"field '{fd.name}' can not be sorted in a query call")
            expr = self.expr(node, fd)
            if node is not self.root or fd.nillable:
                terms.append(f"({expr} IS NULL) {'DESC' if item.nulls_first else 'ASC'}")
            key = f"soql_fold({expr})" if family == "text" else expr  # case-insensitive, one call per row
            terms.append(f"{key} {'DESC' if item.descending else 'ASC'}")
        if terms and not any(t.startswith('t0."Id" ') for t in terms):
            terms.append('t0."Id"')  # deterministic order among ties, so LIMIT/OFFSET pages are stable
        return terms

    # ---- WHERE
    def condition(self, cond: Condition) -> str:
        """SQL that is true exactly when `cond` holds; NULL only ever stands for false (2-valued SOQL logic)."""
        if isinstance(cond, BoolOp):
            return "(" + f" {cond.op} ".join(self.condition(item) for item in cond.items) + ")"
        if isinstance(cond, Not):
            return f"NOT COALESCE({self.condition(cond.item)}, 0)"
        return self.comparison(cond)

    def comparison(self, cmp: Comparison) -> str:
        node, fd = self.resolve(cmp.field)
        pos = cmp.field.pos
        family = _family(fd.type)
        if fd.compound_of or family == "other":
            raise self.error("INVALID_FIELD", pos, f"field '{fd.name}' can not be filtered in a query call")
        for lit in cmp.values:
            self.check_literal(fd, family, lit, pos)
        expr = self.expr(node, fd)
        negated = {"!=": "=", "NOT IN": "IN", "EXCLUDES": "INCLUDES"}
        op = negated.get(cmp.op, cmp.op)
        if op == "LIKE":
            if family != "text":
                raise self.invalid_operator(fd, family, pos)
            lit = cmp.values[0]
            sql = "0" if lit.kind == "null" else f"soql_like({expr}, {self.param(lit.pattern)})"
        elif op == "INCLUDES":
            if family != "multi":
                raise self.error("INVALID_QUERY_FILTER_OPERATOR", pos,
                                 "includes or excludes operator only valid on multipicklist field")
            sql = self.any_of([f"{expr} IS NULL" if lit.kind == "null" else
                               f"soql_includes({expr}, {self.param(lit.value)})" for lit in cmp.values])
        elif op == "IN":
            sql = self.in_list(family, expr, cmp.values)
        else:
            if op != "=" and family in ("boolean", "multi"):
                raise self.invalid_operator(fd, family, pos)
            sql = self.compare(family, expr, op, cmp.values[0])
        return f"NOT COALESCE({sql}, 0)" if cmp.op in negated else sql

    def invalid_operator(self, fd: FieldDef, family: str, pos: int) -> SoqlError:
        word = "id" if family == "id" else fd.type
        return self.error("INVALID_QUERY_FILTER_OPERATOR", pos, f"invalid operator on {word} field")

    def check_literal(self, fd: FieldDef, family: str, lit: Literal, pos: int) -> None:
        if lit.kind == "null" or lit.kind in _ACCEPTED_KINDS[family]:
            return
        quoted = family in ("text", "multi", "id")
        type_word = "string" if quoted else {"int": "integer", "long": "long", "boolean": "boolean", "date": "date",
                                             "datetime": "dateTime"}.get(fd.type, "double")
        raise self.error("INVALID_FIELD", pos,
                         f"value of filter criterion for field '{fd.name}' must be of type {type_word} "
                         f"and should {'' if quoted else 'not '}be enclosed in quotes")

    @staticmethod
    def any_of(parts: list[str]) -> str:
        return "(" + " OR ".join(parts) + ")" if parts else "0"

    def compare(self, family: str, expr: str, op: str, lit: Literal) -> str:
        """`expr op lit` for one literal; op is one of = < <= > >=."""
        if lit.kind == "null":
            return f"{expr} IS NULL" if op == "=" else "0"
        if lit.kind == "date_literal":
            start, end = _date_range(str(lit.value), lit.n, self.today)
            if family == "datetime":
                lo, hi = (_format_datetime(datetime(d.year, d.month, d.day, tzinfo=UTC)) for d in (start, end))
            else:
                lo, hi = start.isoformat(), end.isoformat()
            if op == "=":
                return f"({expr} >= {self.param(lo)} AND {expr} < {self.param(hi)})"
            bound = {"<": lo, "<=": hi, ">": hi, ">=": lo}[op]
            return f"{expr} {'<' if op in ('<', '<=') else '>='} {self.param(bound)}"
        if family == "datetime":
            # Storage has milliseconds; a literal with finer digits lies strictly between two stored values.
            instant: datetime = lit.value  # type: ignore[assignment]
            floor = _format_datetime(instant)
            exact = instant.microsecond % 1000 == 0
            if op == "=":
                return f"{expr} = {self.param(floor)}" if exact else "0"
            ceil = floor if exact else _format_datetime(instant + timedelta(milliseconds=1))
            return f"{expr} {op} {self.param({'<': ceil, '<=': floor, '>': floor, '>=': ceil}[op])}"
        value = self.sql_value(lit, family)
        if family == "text":
            return f"{expr} {op} {self.param(value)} COLLATE SOQL_CI"
        if family == "multi":
            return f"soql_mp_equals({expr}, {self.param(value)})"
        return f"{expr} {op} {self.param(value)}"

    def in_list(self, family: str, expr: str, values: tuple[Literal, ...]) -> str:
        plain: list[object] = []
        parts = []
        for lit in values:
            simple = lit.kind in ("string", "number", "boolean", "date") and family != "multi"
            if simple:
                plain.append(self.sql_value(lit, family))
            else:
                parts.append(self.compare(family, expr, "=", lit))
        if plain:
            collate = " COLLATE SOQL_CI" if family == "text" else ""
            if len(plain) > _IN_LIST_INLINE:  # one JSON array instead of thousands of bound variables
                listed = f"SELECT value FROM json_each({self.param(json.dumps(plain))})"
            else:
                listed = ", ".join(self.param(value) for value in plain)
            parts.insert(0, f"{expr}{collate} IN ({listed})")
        return self.any_of(parts)

    @staticmethod
    def sql_value(lit: Literal, family: str) -> object:
        """The stored form of a literal. A 15-character id becomes its 18-character form: every stored id and
        reference carries its checksum, so the two match exactly when their first 15 characters do, and the
        comparison stays an indexed lookup (`Id IN (...)` of 2,000 ids is a read-back of every writer)."""
        if family == "id" and isinstance(lit.value, str) and len(lit.value) == 15:
            return normalize_id(lit.value) or lit.value
        if lit.kind == "boolean":
            return int(bool(lit.value))
        if lit.kind == "date":
            return lit.value.isoformat()  # type: ignore[union-attr]
        return lit.value


# ------------------------------------------------------------------------------------------------- SQLite functions


def _casefold_compare(a: str, b: str) -> int:
    a, b = a.casefold(), b.casefold()
    return (a > b) - (a < b)


def _fold(value: object) -> object:
    return value.casefold() if isinstance(value, str) else value


@functools.lru_cache(maxsize=256)
def _like_regex(pattern: str) -> re.Pattern[str]:
    """A SOQL LIKE pattern (escaped wildcards as \\% \\_ \\\\) as a case-insensitive regex."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def like_match(value: object, pattern: str | None) -> int:
    """1 when `value` matches the LIKE `pattern` (a STRING token's pattern form), else 0."""
    if value is None or pattern is None:
        return 0
    return int(_like_regex(pattern).fullmatch(str(value)) is not None)


def _picks(value: str) -> set[str]:
    return {part.strip().casefold() for part in value.split(";") if part.strip()}


def _includes(value: str | None, wanted: str | None) -> int:
    """Multipicklist INCLUDES term: 'a;b' means a and b are both selected."""
    if value is None or wanted is None:
        return 0
    need = _picks(wanted)
    return int(bool(need) and need <= _picks(value))


def _mp_equals(value: str | None, wanted: str | None) -> int:
    return int(value is not None and wanted is not None and _picks(value) == _picks(wanted))


def _register_functions(conn: sqlite3.Connection) -> None:
    conn.create_collation("SOQL_CI", _casefold_compare)
    conn.create_function("soql_fold", 1, _fold, deterministic=True)
    conn.create_function("soql_like", 2, like_match, deterministic=True)
    conn.create_function("soql_includes", 2, _includes, deterministic=True)
    conn.create_function("soql_mp_equals", 2, _mp_equals, deterministic=True)


# ------------------------------------------------------------------------------------------------- executor


@dataclass
class QueryResult:
    total_size: int
    records: list[dict]  # JSON-ready REST records; empty for COUNT() and when execute(records=False)
    object_name: str  # canonical sObject name
    columns: list[str]  # flat column names in select order, e.g. ['Id', 'Name', 'Account.Name']
    compound_fields: list[str] = field(default_factory=list)  # selected compound fields (Bulk must refuse them)
    rows: list[tuple] = field(default_factory=list, repr=False)  # the SQL result rows the records are made of
    shape: _Shape | None = field(default=None, repr=False)
    base: str = ""  # the sObject URL prefix of the records' attributes

    def flat_rows(self) -> Iterator[list[object]]:
        """One list per record with the values of `columns` (for Bulk CSV): None for null, booleans as
        'true'/'false', compound values as JSON text — the values of the REST records, read straight from
        the SQL rows (a Bulk query of 100,000 records never builds them)."""
        if self.shape is None:
            return
        readers = [self.shape.reader(column.split("."), self.base) for column in self.columns]
        for row in self.rows:
            yield [read(row) for read in readers]


def execute(conn: sqlite3.Connection, model: Model, soql: str, *, include_deleted: bool = False,
            api_version: str = "59.0", now: datetime | None = None, records: bool = True) -> QueryResult:
    """Run a SOQL query against the sandbox storage. Raises SoqlError for queries Salesforce would refuse.
    `records=False`: no REST records (`flat_rows` only, as Bulk API 2.0 answers)."""
    query = parse(soql)
    plan = _Compiler(model, query, now or datetime.now(UTC), include_deleted).compile()
    _register_functions(conn)
    cursor = conn.cursor()
    cursor.row_factory = None  # plain tuples, whatever the connection's row factory
    try:
        cursor.execute(plan.sql, plan.params)
        if plan.shape is None:
            count = cursor.fetchone()[0]
            return QueryResult(count, [], plan.object_name, [])
        base = f"/services/data/v{api_version.lstrip('vV')}/sobjects"
        rows = cursor.fetchall()
    finally:
        cursor.close()
    shape = plan.shape
    return QueryResult(len(rows), [shape.value(row, base) for row in rows] if records else [],  # type: ignore[misc]
                       plan.object_name, plan.columns, plan.compound_fields, rows=rows, shape=shape, base=base)
