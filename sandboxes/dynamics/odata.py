"""OData system query options as Dataverse accepts them: `$filter`, `$select`, `$orderby`, `$expand`.

`$filter` is parsed once into a small syntax tree (`parse_filter`) and then either compiled to SQL over an entity's
SQLite table (`to_sql`, for records) or evaluated against plain dicts (`matches`, for metadata such as
EntityDefinitions). The grammar is the one the Web API documents
(learn.microsoft.com/power-apps/developer/data-platform/webapi/query/filter-rows):

  * comparison `eq ne gt ge lt le`, logical `and or not`, parentheses
  * `contains(p,'x')`, `startswith`, `endswith`, with Dataverse's wildcards in the text (% _ [set] [^set], as
    T-SQL LIKE: "Use wildcard characters" in filter-rows; `[%]` matches a literal %)
  * literals: 'text' (a quote doubled inside: 'O''Brien'), integers and decimals, true/false, null, unquoted GUIDs,
    unquoted dates (2024-05-01) and date-times (2024-05-01T10:20:30Z, fractions and offsets allowed), enum literals
    (Microsoft.Dynamics.CRM.OwnershipTypes'UserOwned')
  * query functions `Microsoft.Dynamics.CRM.<Name>(PropertyName='p',PropertyValue=..|PropertyValues=[..])`:
    In, NotIn, Between, NotBetween, Last/Next/OlderThan X Hours/Days/Weeks/Months/Years, Today, Yesterday,
    Tomorrow, On, NotOn, OnOrAfter, OnOrBefore, ContainValues, DoesNotContainValues, EqualUserId, NotEqualUserId
    (learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/queryfunctions)

String comparisons are case-insensitive, as Dataverse's SQL collation makes them. Date-times are compared in UTC
(the sandbox user's time zone is UTC). A syntax error is a 400 with the position, like the real service.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Sequence

from .errors import DataverseError, INVALID_PROPERTY, bad_request, no_property
from .model import INTEGER_TYPES, NUMBER_TYPES, Attribute, Entity

FUNCTION_PREFIX = "Microsoft.Dynamics.CRM."
_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_DATETIME = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,7})?)?(?:Z|[+-]\d{2}:\d{2})"
_TOKEN = re.compile(
    rf"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<guid>{_GUID})(?![\w-])|(?P<datetime>{_DATETIME})|"
    rf"(?P<date>\d{{4}}-\d{{2}}-\d{{2}})(?![\w:])|(?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[mMdDfFlL]?)(?![\w-])|"
    rf"(?P<enum>[A-Za-z_][\w.]*'(?:[^']|'')*')|(?P<name>[A-Za-z_$@][\w.$@]*(?:/[A-Za-z_$@][\w.$@]*)*)|"
    rf"(?P<punct>[(),=\[\]]))")
_COMPARISONS = ("eq", "ne", "gt", "ge", "lt", "le")
_SQL_OPS = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}


# ---------------------------------------------------------------- syntax tree

@dataclass(frozen=True)
class Literal:
    value: Any
    kind: str  # string guid datetime date number bool null enum list


@dataclass(frozen=True)
class Prop:
    path: str


@dataclass(frozen=True)
class Compare:
    op: str
    left: Any
    right: Any


@dataclass(frozen=True)
class Logical:
    op: str  # and | or
    left: Any
    right: Any


@dataclass(frozen=True)
class Not:
    operand: Any


@dataclass(frozen=True)
class Call:
    name: str  # contains startswith endswith, or a query function name without its namespace
    args: tuple[Any, ...] = ()
    named: tuple[tuple[str, Any], ...] = ()

    def arg(self, key: str) -> Any:
        return next((v for k, v in self.named if k.lower() == key.lower()), None)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = self._tokenize(text)
        self.pos = 0

    def _tokenize(self, text: str) -> list[tuple[str, str, int]]:
        tokens, i = [], 0
        while i < len(text):
            if text[i:].strip() == "":
                break
            match = _TOKEN.match(text, i)
            if match is None or match.end() == i:
                raise self.error(i)
            kind = match.lastgroup or ""
            tokens.append((kind, match.group(kind), match.start(kind)))
            i = match.end()
        return tokens

    def error(self, position: int | None = None) -> DataverseError:
        at = position if position is not None else (self.tokens[self.pos][2] if self.pos < len(self.tokens)
                                                    else len(self.text))
        return bad_request(f"Syntax error at position {at} in '{self.text}'.", INVALID_PROPERTY)

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str, int]:
        token = self.peek()
        if token is None or (value is not None and token[1].lower() != value.lower()):
            raise self.error()
        self.pos += 1
        return token

    def parse(self) -> Any:
        node = self.or_expr()
        if self.peek() is not None:
            raise self.error()
        return node

    def or_expr(self) -> Any:
        node = self.and_expr()
        while self._keyword("or"):
            node = Logical("or", node, self.and_expr())
        return node

    def and_expr(self) -> Any:
        node = self.unary()
        while self._keyword("and"):
            node = Logical("and", node, self.unary())
        return node

    def unary(self) -> Any:
        if self._keyword("not"):
            return Not(self.unary())
        return self.comparison()

    def comparison(self) -> Any:
        left = self.primary()
        token = self.peek()
        if token and token[0] == "name" and token[1].lower() in _COMPARISONS:
            self.pos += 1
            return Compare(token[1].lower(), left, self.primary())
        return left

    def primary(self) -> Any:
        token = self.peek()
        if token is None:
            raise self.error()
        kind, value, _ = token
        if value == "(":
            self.pos += 1
            node = self.or_expr()
            self.take(")")
            return node
        if value == "[":
            return self.list_literal()
        if kind == "name":
            self.pos += 1
            nxt = self.peek()
            if nxt is not None and nxt[1] == "(":
                return self.call(value)
            lowered = value.lower()
            if lowered in ("true", "false"):
                return Literal(lowered == "true", "bool")
            if lowered == "null":
                return Literal(None, "null")
            return Prop(value)
        self.pos += 1
        try:
            return _literal(kind, value)
        except ValueError:  # 2024-02-30, month 13, a moment before year 1 in UTC
            edm = {"datetime": "Edm.DateTimeOffset", "date": "Edm.Date"}.get(kind, "Edm.Decimal")
            raise bad_request(f"Unrecognized '{edm}' literal '{value}' at '{token[2]}' in '{self.text}'.",
                              INVALID_PROPERTY) from None

    def list_literal(self) -> Literal:
        self.take("[")
        items = []
        while self.peek() is not None and self.peek()[1] != "]":  # type: ignore[index]
            items.append(self.primary())
            if self.peek() is not None and self.peek()[1] == ",":  # type: ignore[index]
                self.pos += 1
        self.take("]")
        return Literal([i.value if isinstance(i, Literal) else i for i in items], "list")

    def call(self, name: str) -> Call:
        self.take("(")
        args: list[Any] = []
        named: list[tuple[str, Any]] = []
        while self.peek() is not None and self.peek()[1] != ")":  # type: ignore[index]
            token = self.peek()
            after = self.tokens[self.pos + 1] if self.pos + 1 < len(self.tokens) else None
            if token[0] == "name" and after is not None and after[1] == "=":  # type: ignore[index]
                self.pos += 2
                named.append((token[1], self.primary()))  # type: ignore[index]
            else:
                args.append(self.or_expr())
            if self.peek() is not None and self.peek()[1] == ",":  # type: ignore[index]
                self.pos += 1
        self.take(")")
        short = name[len(FUNCTION_PREFIX):] if name.startswith(FUNCTION_PREFIX) else name
        return Call(short if name.startswith(FUNCTION_PREFIX) else name.lower(), tuple(args), tuple(named))

    def _keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token[0] == "name" and token[1].lower() == word:
            self.pos += 1
            return True
        return False


def _literal(kind: str, value: str) -> Literal:
    if kind == "string":
        return Literal(value[1:-1].replace("''", "'"), "string")
    if kind == "guid":
        return Literal(value.lower(), "guid")
    if kind == "datetime":
        return Literal(parse_datetime(value), "datetime")
    if kind == "date":
        return Literal(date.fromisoformat(value), "date")
    if kind == "number":
        text = value.rstrip("mMdDfFlL")
        return Literal(float(text) if any(c in text for c in ".eE") else int(text), "number")
    if kind == "enum":
        _, _, quoted = value.partition("'")
        return Literal(quoted[:-1].replace("''", "'"), "enum")
    return Literal(value, kind)


def parse_filter(text: str) -> Any:
    """The syntax tree of a `$filter` value; a 400 DataverseError on a syntax error."""
    return _Parser(text).parse()


def parse_datetime(text: str) -> datetime:
    """An ISO date-time (fraction up to 7 digits, `Z` or offset) as an aware UTC datetime; ValueError for one
    that is no date-time, or lies before year 1 once in UTC (0001-01-01T00:30:00+01:00)."""
    head, dot, rest = text.partition(".")
    if dot:
        digits = re.match(r"\d+", rest).group(0)  # type: ignore[union-attr]
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits):]}"
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"{text!r} lies before year 1 in UTC") from None


def format_datetime(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- splitting option values

def split_top_level(text: str, separator: str = ",") -> list[str]:
    """Split on `separator` outside parentheses and quotes: `a($select=b,c),d` -> ['a($select=b,c)', 'd']."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and ch == separator:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_expand(text: str) -> list[tuple[str, dict[str, str]]]:
    """`$expand` items as (navigation property, {option: value}); nested options are separated by ';'."""
    items = []
    for part in split_top_level(text):
        name, paren, rest = part.partition("(")
        options: dict[str, str] = {}
        if paren:
            if not rest.endswith(")"):
                raise bad_request(f"Syntax error in $expand: '{part}'.", INVALID_PROPERTY)
            for option in split_top_level(rest[:-1], ";"):
                key, _, value = option.partition("=")
                options[key.strip().lower()] = value.strip()
        items.append((name.strip(), options))
    return items


def parse_orderby(text: str) -> list[tuple[str, bool]]:
    """`$orderby` as [(property, descending)]."""
    order = []
    for part in split_top_level(text):
        words = part.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise bad_request(f"Syntax error in $orderby: '{part}'.", INVALID_PROPERTY)
        order.append((words[0], len(words) == 2 and words[1].lower() == "desc"))
    return order


def parse_select(text: str | None) -> list[str] | None:
    return None if not text else split_top_level(text)


# ---------------------------------------------------------------- records: compile to SQL

class SqlFilter:
    """Compiles a filter tree to a SQL condition (with parameters) over one entity's table."""

    def __init__(self, entity: Entity, now: datetime, user_id: str) -> None:
        self.entity, self.now, self.user_id = entity, now, user_id
        self.params: list[Any] = []

    def compile(self, node: Any) -> str:
        if isinstance(node, Logical):
            return f"({self.compile(node.left)} {node.op.upper()} {self.compile(node.right)})"
        if isinstance(node, Not):
            return f"(NOT {self.compile(node.operand)})"
        if isinstance(node, Compare):
            return self.comparison(node)
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, Literal) and node.kind == "bool":
            return "1" if node.value else "0"
        if isinstance(node, Prop):
            attr = self.column(node.path)
            if attr.type == "Boolean":
                return f'("{attr.name}" = 1)'
        raise bad_request("The $filter expression must be a boolean condition.", INVALID_PROPERTY)

    def column(self, path: str) -> Attribute:
        """The attribute a property path names: `firstname`, `_parentcustomerid_value`, `primarycontactid/contactid`."""
        nav, slash, leaf = path.partition("/")
        if slash:
            target = self.entity.navigation(nav)
            if target is None or leaf != f"{target[1]}id":
                raise bad_request(f"Filtering on the navigation path '{path}' isn't supported by the sandbox; use "
                                  f"_{nav.split('_')[0]}_value.", INVALID_PROPERTY)
            return target[0]
        attr = self.entity.by_value_property(path)
        if attr is None:
            raise no_property(path, self.entity.name)
        return attr

    def comparison(self, node: Compare) -> str:
        left, right, op = node.left, node.right, node.op
        if isinstance(left, Literal) and isinstance(right, Prop):
            left, right = right, left
            op = {"gt": "lt", "lt": "gt", "ge": "le", "le": "ge"}.get(op, op)
        if not isinstance(left, Prop) or not isinstance(right, Literal):
            raise bad_request("A comparison must put a property on one side and a literal on the other.",
                              INVALID_PROPERTY)
        attr = self.column(left.path)
        column = f'"{attr.name}"'
        if right.kind == "null":
            if op not in ("eq", "ne"):
                raise bad_request(f"The operator '{op}' can't be used with null.", INVALID_PROPERTY)
            return f"({column} IS {'NOT ' if op == 'ne' else ''}NULL)"
        value = self.value(attr, right)
        if isinstance(value, str) and attr.type in ("String", "Memo"):
            column, value = f"lower({column})", value.lower()
        self.params.append(value)
        return f"({column} {_SQL_OPS[op]} ?)"

    def value(self, attr: Attribute, literal: Literal) -> Any:
        """A literal converted to the column's storage form, or a 400 naming the mismatch."""
        return storage_value(attr, literal.value, literal.kind, self.entity.name)

    def call(self, node: Call) -> str:
        if node.name in ("contains", "startswith", "endswith"):
            return self.like(node)
        handler = _QUERY_FUNCTIONS.get(node.name)
        if handler is None:
            raise bad_request(f"The query function '{node.name}' isn't supported.", INVALID_PROPERTY)
        name = node.arg("PropertyName")
        if not isinstance(name, Literal) or name.kind != "string":
            raise bad_request(f"{FUNCTION_PREFIX}{node.name} needs PropertyName='<column>'.", INVALID_PROPERTY)
        return handler(self, self.column(name.value), node)

    def like(self, node: Call) -> str:
        """contains/startswith/endswith with Dataverse's wildcards inside the text (% _ [set] [^set], T-SQL LIKE
        semantics; `[%]` matches a literal %), case-insensitive: run as SQLite GLOB over lower-cased text."""
        if len(node.args) != 2 or not isinstance(node.args[0], Prop) or not isinstance(node.args[1], Literal):
            raise bad_request(f"{node.name}() takes a property and a string.", INVALID_PROPERTY)
        attr = self.column(node.args[0].path)
        text = like_to_glob(str(node.args[1].value).lower())
        pattern = {"contains": f"*{text}*", "startswith": f"{text}*", "endswith": f"*{text}"}[node.name]
        self.params.append(pattern)
        return f"(lower(\"{attr.name}\") GLOB ?)"

    # ---- query function helpers

    def values_of(self, attr: Attribute, node: Call) -> list[Any]:
        values = node.arg("PropertyValues")
        if not isinstance(values, Literal) or values.kind != "list":
            raise bad_request(f"{FUNCTION_PREFIX}{node.name} needs PropertyValues=[...].", INVALID_PROPERTY)
        return [storage_value(attr, v, _kind_of(v), self.entity.name) for v in values.value]

    def count_of(self, node: Call) -> int:
        value = node.arg("PropertyValue")
        try:
            return int(value.value)  # type: ignore[union-attr]
        except (AttributeError, TypeError, ValueError):
            raise bad_request(f"{FUNCTION_PREFIX}{node.name} needs PropertyValue=<number>.", INVALID_PROPERTY) \
                from None

    def between(self, attr: Attribute, low: Any, high: Any, *, negate: bool = False) -> str:
        self.params += [low, high]
        condition = f"(\"{attr.name}\" >= ? AND \"{attr.name}\" < ?)"
        return f"(NOT {condition} OR \"{attr.name}\" IS NULL)" if negate else condition

    def moment(self, attr: Attribute, value: datetime) -> str:
        return value.date().isoformat() if attr.date_only else format_datetime(value)


def like_to_glob(pattern: str) -> str:
    """A T-SQL LIKE pattern (% any run, _ one character, [abc] / [a-c] / [^a] sets, an unclosed [ literal) as a
    SQLite GLOB pattern, whose own wildcards * and ? are bracketed to stay literal."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        close = pattern.find("]", i + 2) if char == "[" else -1
        if char == "%":
            out.append("*")
        elif char == "_":
            out.append("?")
        elif char == "[" and close != -1:
            out.append(pattern[i:close + 1])
            i = close
        elif char in "*?[":
            out.append(f"[{char}]")
        else:
            out.append(char)
        i += 1
    return "".join(out)


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, datetime):
        return "datetime"
    if isinstance(value, date):
        return "date"
    return "string"


def storage_value(attr: Attribute, value: Any, kind: str, entity: str) -> Any:
    """Convert a filter literal (or a query-function value) to how `attr` is stored."""
    mismatch = bad_request(f"A binary operator with incompatible types was detected. Found operand types "
                           f"'{_edm(attr)}' and '{_edm_of_kind(kind)}' for the operator kind 'Equal'.",
                           INVALID_PROPERTY)
    if attr.type == "DateTime":
        if kind == "string":
            try:
                value = parse_datetime(value) if "T" in str(value) else date.fromisoformat(str(value))
            except ValueError:
                raise mismatch from None
        if isinstance(value, datetime):
            return value.date().isoformat() if attr.date_only else format_datetime(value)
        if isinstance(value, date):
            return value.isoformat() if attr.date_only else f"{value.isoformat()}T00:00:00Z"
        raise mismatch
    if attr.type in ("Uniqueidentifier",) or attr.is_lookup:
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            raise mismatch from None
    if attr.type == "Boolean":
        if kind == "bool" or kind == "number":
            return int(bool(value))
        raise mismatch
    if attr.type in INTEGER_TYPES:
        try:
            return int(value) if kind in ("number", "string") else _raise(mismatch)
        except ValueError:
            raise mismatch from None
    if attr.type in NUMBER_TYPES:
        try:
            return float(value) if kind in ("number", "string") else _raise(mismatch)
        except ValueError:
            raise mismatch from None
    if attr.is_multiselect:
        return normalize_multiselect(str(value))
    if kind not in ("string", "number"):
        raise mismatch
    return str(value)


def _raise(error: Exception) -> Any:
    raise error


def normalize_multiselect(text: str) -> str:
    return ",".join(str(v) for v in sorted({int(p) for p in text.split(",") if p.strip()}))


def _edm(attr: Attribute) -> str:
    return {"String": "Edm.String", "Memo": "Edm.String", "Integer": "Edm.Int32", "BigInt": "Edm.Int64",
            "Money": "Edm.Decimal", "Decimal": "Edm.Decimal", "Double": "Edm.Double", "Boolean": "Edm.Boolean",
            "DateTime": "Edm.DateTimeOffset", "Uniqueidentifier": "Edm.Guid"}.get(
        attr.type, "Edm.Guid" if attr.is_lookup else "Edm.Int32")


def _edm_of_kind(kind: str) -> str:
    return {"string": "Edm.String", "number": "Edm.Int32", "bool": "Edm.Boolean", "guid": "Edm.Guid",
            "datetime": "Edm.DateTimeOffset", "date": "Edm.Date"}.get(kind, "Edm.String")


def _start_of_day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _add_months(moment: datetime, months: int) -> datetime:
    month = moment.month - 1 + months
    year, month = moment.year + month // 12, month % 12 + 1
    day = min(moment.day, [31, 29 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 28, 31, 30, 31, 30,
                           31, 31, 30, 31, 30, 31][month - 1])
    return moment.replace(year=year, month=month, day=day)


def _shift(moment: datetime, unit: str, count: int) -> datetime:
    if unit == "Hours":
        return moment + timedelta(hours=count)
    if unit == "Days":
        return moment + timedelta(days=count)
    if unit == "Weeks":
        return moment + timedelta(weeks=count)
    return _add_months(moment, count * (12 if unit == "Years" else 1))


def _relative(direction: str, unit: str) -> Callable[[SqlFilter, Attribute, Call], str]:
    """Last/Next/OlderThan X <unit>: Dataverse counts whole days from midnight, hours from now."""
    def handler(f: SqlFilter, attr: Attribute, node: Call) -> str:
        count = f.count_of(node)
        anchor = f.now if unit == "Hours" else _start_of_day(f.now)
        if direction == "Last":
            return f.between(attr, f.moment(attr, _shift(anchor, unit, -count)),
                             f.moment(attr, f.now + timedelta(seconds=1)))
        if direction == "Next":
            end = _shift(anchor, unit, count) + (timedelta(days=1) if unit != "Hours" else timedelta(0))
            return f.between(attr, f.moment(attr, f.now), f.moment(attr, end))
        f.params.append(f.moment(attr, _shift(anchor, unit, -count)))
        return f"(\"{attr.name}\" < ?)"
    return handler


def _day(offset: int) -> Callable[[SqlFilter, Attribute, Call], str]:
    def handler(f: SqlFilter, attr: Attribute, node: Call) -> str:
        start = _start_of_day(f.now) + timedelta(days=offset)
        return f.between(attr, f.moment(attr, start), f.moment(attr, start + timedelta(days=1)))
    return handler


def _on(kind: str) -> Callable[[SqlFilter, Attribute, Call], str]:
    def handler(f: SqlFilter, attr: Attribute, node: Call) -> str:
        raw = node.arg("PropertyValue")
        if not isinstance(raw, Literal):
            raise bad_request(f"{FUNCTION_PREFIX}{node.name} needs PropertyValue=<date>.", INVALID_PROPERTY)
        value = raw.value if isinstance(raw.value, (date, datetime)) else parse_datetime(f"{raw.value}T00:00:00Z") \
            if len(str(raw.value)) == 10 else parse_datetime(str(raw.value))
        day = datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
        low, high = f.moment(attr, day), f.moment(attr, day + timedelta(days=1))
        if kind == "On":
            return f.between(attr, low, high)
        if kind == "NotOn":
            return f.between(attr, low, high, negate=True)
        f.params.append(low if kind == "OnOrAfter" else high)
        return f"(\"{attr.name}\" {'>=' if kind == 'OnOrAfter' else '<'} ?)"
    return handler


def _in(negate: bool) -> Callable[[SqlFilter, Attribute, Call], str]:
    def handler(f: SqlFilter, attr: Attribute, node: Call) -> str:
        values = f.values_of(attr, node)
        if not values:
            return "(1 = 0)" if not negate else "(1 = 1)"
        column = f'"{attr.name}"'
        if attr.type in ("String", "Memo"):
            column, values = f"lower({column})", [str(v).lower() for v in values]
        f.params.extend(values)
        return f"({column} {'NOT ' if negate else ''}IN ({', '.join('?' * len(values))}))"
    return handler


def _between(negate: bool) -> Callable[[SqlFilter, Attribute, Call], str]:
    def handler(f: SqlFilter, attr: Attribute, node: Call) -> str:
        values = f.values_of(attr, node)
        if len(values) != 2:
            raise bad_request(f"{FUNCTION_PREFIX}{node.name} needs exactly two PropertyValues.", INVALID_PROPERTY)
        f.params += values
        condition = f"(\"{attr.name}\" BETWEEN ? AND ?)"
        return f"(NOT {condition})" if negate else condition
    return handler


def _contain_values(negate: bool) -> Callable[[SqlFilter, Attribute, Call], str]:
    def handler(f: SqlFilter, attr: Attribute, node: Call) -> str:
        if not attr.is_multiselect:
            raise bad_request(f"{FUNCTION_PREFIX}{node.name} works on multi-select choice columns only.",
                              INVALID_PROPERTY)
        raw = node.arg("PropertyValues")
        values = [str(int(v)) for v in (raw.value if isinstance(raw, Literal) and raw.kind == "list" else [])]
        parts = []
        for value in values:
            f.params.append(f"%,{value},%")
            parts.append(f"(',' || \"{attr.name}\" || ',' LIKE ?)")
        condition = f"({' OR '.join(parts) or '1 = 0'})"
        return f"(NOT {condition} OR \"{attr.name}\" IS NULL)" if negate else condition
    return handler


def _user(negate: bool) -> Callable[[SqlFilter, Attribute, Call], str]:
    def handler(f: SqlFilter, attr: Attribute, node: Call) -> str:
        f.params.append(f.user_id)
        return f"(\"{attr.name}\" {'<>' if negate else '='} ?)"
    return handler


_QUERY_FUNCTIONS: dict[str, Callable[[SqlFilter, Attribute, Call], str]] = {
    "In": _in(False), "NotIn": _in(True), "Between": _between(False), "NotBetween": _between(True),
    "Today": _day(0), "Yesterday": _day(-1), "Tomorrow": _day(1),
    "On": _on("On"), "NotOn": _on("NotOn"), "OnOrAfter": _on("OnOrAfter"), "OnOrBefore": _on("OnOrBefore"),
    "ContainValues": _contain_values(False), "DoesNotContainValues": _contain_values(True),
    "EqualUserId": _user(False), "NotEqualUserId": _user(True),
    **{f"{d}X{u}": _relative(d if d != "OlderThan" else "OlderThan", u)
       for d in ("Last", "Next", "OlderThan") for u in ("Hours", "Days", "Weeks", "Months", "Years")},
}


def to_sql(tree: Any, entity: Entity, now: datetime, user_id: str) -> tuple[str, list[Any]]:
    compiler = SqlFilter(entity, now, user_id)
    return compiler.compile(tree), compiler.params


# ---------------------------------------------------------------- metadata: evaluate on dicts

def matches(tree: Any, item: dict[str, Any]) -> bool:
    """Evaluate a filter tree against a metadata dict (EntityDefinitions, Attributes, option sets)."""
    if isinstance(tree, Logical):
        left = matches(tree.left, item)
        return (left and matches(tree.right, item)) if tree.op == "and" else (left or matches(tree.right, item))
    if isinstance(tree, Not):
        return not matches(tree.operand, item)
    if isinstance(tree, Compare):
        left, right = _operand(tree.left, item), _operand(tree.right, item)
        if tree.op in ("eq", "ne"):
            return (left == right) == (tree.op == "eq")
        if left is None or right is None:
            return False
        try:
            return {"gt": left > right, "ge": left >= right, "lt": left < right, "le": left <= right}[tree.op]
        except TypeError:
            return False
    if isinstance(tree, Call) and tree.name in ("contains", "startswith", "endswith") and len(tree.args) == 2:
        text, part = _operand(tree.args[0], item), _operand(tree.args[1], item)
        if not isinstance(text, str) or not isinstance(part, str):
            return False
        text, part = text.lower(), part.lower()
        return {"contains": part in text, "startswith": text.startswith(part), "endswith": text.endswith(part)}[
            tree.name]
    if isinstance(tree, Prop):
        return bool(_operand(tree, item))
    raise bad_request("This $filter isn't supported on metadata.", INVALID_PROPERTY)


def _operand(node: Any, item: dict[str, Any]) -> Any:
    if isinstance(node, Literal):
        if node.kind == "guid":
            return str(node.value)
        return node.value
    if isinstance(node, Prop):
        value: Any = item
        for step in node.path.split("/"):
            value = value.get(step) if isinstance(value, dict) else None
        if isinstance(value, dict) and "Value" in value:  # a complex value compared as a whole
            return value["Value"]
        return value
    raise bad_request("A comparison operand must be a property or a literal.", INVALID_PROPERTY)


def select_keys(item: dict[str, Any], select: Sequence[str] | None, always: Sequence[str] = ()) -> dict[str, Any]:
    """Keep only the selected keys of a metadata dict (plus `always` and @odata annotations)."""
    if not select:
        return item
    wanted = set(select) | set(always)
    return {k: v for k, v in item.items() if k in wanted or k.startswith("@odata")}
