"""REST API resources under /OnDemand/user/Rest/<version>/: collections, items, child resources, describe.

Paths and payloads follow the REST API Developer's Guide (Release 32, docs.oracle.com/cd/E71332_01/books/
OnDemRestAPI/ and later releases):
- list and query a collection: `GET /Accounts?fields=&q=&orderBy=&offset=&limit=&onlyData=` -> `{"Accounts": [...],
  "links": {...}, "_contextInfo": {"limit", "offset", "lastpage"}}` (Ref20 "Retrieving a Collection Top-Level
  Resource List", Ref23 "Querying a Collection Resource", Ref28 "Sorting", Ref29 "Paging": limit 1..100,
  default 100, offset default 0);
- read one: `GET /Accounts/<Id>?fields=` -> `{"Accounts": [{..., "links": {...}}]}` (Ref10);
- create: `POST /Accounts` with `{"Accounts": [{...}]}` -> 201, `Location: https://<host>/OnDemand/user/Rest/
  latest/Accounts/<Id>`, the record echoed with links (Ref7 "Creating Oracle CRM On Demand Top-Level Resources");
- update: `PATCH /Accounts/<Id>` -> 200 with the record (Ref13); delete: `DELETE` -> 204 (Ref49);
- children: `/Accounts/<Id>/child/Opportunities[/<Id>]` with parent links (Ref21, Ref8, Ref14);
- `onlyData=true` leaves out the links; `LOVLanguageMode: LIC|LDC` picks picklist codes or display values.

Records contain the requested `fields` only (all but the CI_ copies when `fields` is absent), so the echo of a
create holds what was sent; the new Id is in the Location header, as in the guide's example. Dates are
YYYY-MM-DD, datetimes the user's wall-clock time with a literal `Z` (values.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from starlette.responses import Response

from . import describe
from .context import Sandbox, json_response, paging
from .errors import (BAD_BODY, BAD_PARAMETER, MEDIA_TYPE, METHOD, NO_RECORD, NOT_FOUND, READ_ONLY, SORT_AND_FILTER,
                     UNKNOWN_FIELD, OracleError)
from .model import BY_RESOURCE, RECORD_TYPES, Field, RecordType
from .query import Comparison, Node, conjunction, parse_rest_q
from .values import Dialect

ACCEPTED_BODIES = ("application/vnd.oracle.adf.resource+json", "application/json")
DEFAULT_LIMIT = 100


@dataclass
class RestCall:
    """One authenticated REST request; `path` is relative to /OnDemand/user/Rest/<version>."""
    sandbox: Sandbox
    method: str
    path: str
    version: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    host_url: str  # https://host:port
    user_id: str
    dialect: Dialect = field(init=False)

    def __post_init__(self) -> None:
        mode = self.headers.get("lovlanguagemode", "LIC").strip().upper() or "LIC"
        if mode not in ("LIC", "LDC"):
            raise OracleError(BAD_PARAMETER, mode, "LOVLanguageMode", "use LIC or LDC")
        self.dialect = self.sandbox.dialect("rest", mode)

    @property
    def base(self) -> str:
        return f"/OnDemand/user/Rest/{self.version}"

    @property
    def only_data(self) -> bool:
        return self.query.get("onlyData", "false").strip().lower() == "true"


def dispatch(call: RestCall) -> Response:
    """Route by path shape; see the module docstring for the resources."""
    parts = [p for p in call.path.split("/") if p]
    if parts == ["describe"]:
        return _only(call, "GET", lambda: describe.all_resources(call))
    if not parts or parts[0] not in BY_RESOURCE:
        raise OracleError(NOT_FOUND, "/" + "/".join(parts))
    rt = BY_RESOURCE[parts[0]]
    rest = parts[1:]
    if not rest:
        return _collection(call, rt, parent=None)
    if rest == ["describe"] or (len(rest) == 2 and rest[1] == "describe"):
        return _only(call, "GET", lambda: describe.one_resource(call, rt))
    record_id, rest = rest[0], rest[1:]
    if not rest:
        return _item(call, rt, record_id, parent=None)
    if rest[0] != "child" or len(rest) < 2 or rest[1] not in rt.children:
        raise OracleError(NOT_FOUND, call.path)
    child_rt = RECORD_TYPES[rt.children[rest[1]][0]]
    parent = _Parent(rt, _existing(call, rt, record_id), rest[1], rt.children[rest[1]][1])
    if len(rest) == 2:
        return _collection(call, child_rt, parent)
    if rest[2:] == ["describe"]:
        return _only(call, "GET", lambda: describe.one_resource(call, child_rt))
    if len(rest) == 3:
        return _item(call, child_rt, rest[2], parent)
    raise OracleError(NOT_FOUND, call.path)


@dataclass(frozen=True)
class _Parent:
    rt: RecordType
    id: str
    child_name: str
    foreign_key: str

    def path(self, base: str) -> str:
        return f"{base}/{self.rt.resource}/{self.id}/child/{self.child_name}"


def _only(call: RestCall, method: str, handler: Callable[[], Response]) -> Response:
    if call.method != method:
        raise OracleError(METHOD, call.method, call.path)
    return handler()


# ---------------------------------------------------------------- collections


def _collection(call: RestCall, rt: RecordType, parent: _Parent | None) -> Response:
    if call.method == "GET":
        return _list(call, rt, parent)
    if call.method == "POST":
        return _create(call, rt, parent)
    raise OracleError(METHOD, call.method, call.path)


def _list(call: RestCall, rt: RecordType, parent: _Parent | None) -> Response:
    fields = _fields(call, rt)
    where = parse_rest_q(call.query.get("q", ""), rt, call.dialect)
    order = _order_by(call, rt)
    if where is not None and order and call.sandbox.settings.sort_or_filter:
        raise OracleError(SORT_AND_FILTER, "q parameter", "orderBy parameter")
    if parent is not None:
        where = conjunction([Comparison(parent.foreign_key, "=", parent.id), where])
    offset, limit = paging(call.query, DEFAULT_LIMIT, call.sandbox.settings.page_size_limit)
    rows = call.sandbox.store.select(rt, _with_id(rt, fields), where, order, offset, limit + 1)
    base_path = parent.path(call.base) if parent else f"{call.base}/{rt.resource}"
    records = [_record(call, rt, fields, row, _self_path(call, rt, row, parent)) for row in rows[:limit]]
    body: dict[str, Any] = {rt.resource if parent is None else parent.child_name: records}
    if not call.only_data:
        body["links"] = {"self": {"rel": "self", "href": base_path}}
    body["_contextInfo"] = {"limit": limit, "offset": offset, "lastpage": len(rows) <= limit}
    return json_response(body)


def _create(call: RestCall, rt: RecordType, parent: _Parent | None) -> Response:
    values = _body_record(call, rt, parent.child_name if parent else rt.resource)
    if parent is not None:
        values.setdefault(parent.foreign_key, parent.id)
    stored = _to_storage(call, rt, values)
    record_id = _write(call, rt, "insert", lambda: call.sandbox.store.insert(rt, stored, user_id=call.user_id))
    row = {**{f.name: None for f in rt.stored_fields()}, **stored, "Id": record_id}
    path = parent.path(call.base) + f"/{record_id}" if parent else f"{call.base}/{rt.resource}/{record_id}"
    echo = _record(call, rt, [rt.fields[name] for name in values], row, path)
    return json_response({parent.child_name if parent else rt.resource: [echo]}, status=201,
                         headers={"Location": f"{call.host_url}{path}"})


# ---------------------------------------------------------------- items


def _item(call: RestCall, rt: RecordType, record_id: str, parent: _Parent | None) -> Response:
    current = _existing(call, rt, record_id, parent)
    name = parent.child_name if parent else rt.resource
    path = parent.path(call.base) + f"/{current}" if parent else f"{call.base}/{rt.resource}/{current}"
    store = call.sandbox.store
    if call.method == "GET":
        fields = _fields(call, rt)
        row = store.select(rt, _with_id(rt, fields), Comparison("Id", "=", current))[0]
        return json_response({name: [_record(call, rt, fields, row, path)]})
    if call.method == "PATCH":
        values = _body_record(call, rt, name)
        stored = _to_storage(call, rt, values)
        _write(call, rt, "update", lambda: store.update(rt, current, stored, user_id=call.user_id))
        row = store.get(rt, current) or {}
        return json_response({name: [_record(call, rt, [rt.fields[n] for n in values], row, path)]})
    if call.method == "DELETE":
        _write(call, rt, "delete", lambda: store.delete(rt, current, user_id=call.user_id))
        return Response(status_code=204)
    raise OracleError(METHOD, call.method, call.path)


def _existing(call: RestCall, rt: RecordType, record_id: str, parent: _Parent | None = None) -> str:
    where: Node = Comparison("Id", "=", record_id)
    if parent is not None:
        where = conjunction([where, Comparison(parent.foreign_key, "=", parent.id)]) or where
    if not call.sandbox.store.count(rt, where):
        raise OracleError(NO_RECORD, rt.name, "Id", record_id)
    return record_id


def _write(call: RestCall, rt: RecordType, operation: str, action: Callable[[], Any]) -> Any:
    if not rt.writable:
        raise OracleError(METHOD, call.method, call.path)
    with call.sandbox.store.atomic():
        result = action()
    call.sandbox.stats.writes[rt.name][operation] += 1
    return result


# ---------------------------------------------------------------- request parsing


def _fields(call: RestCall, rt: RecordType) -> list[Field]:
    raw = call.query.get("fields")
    if raw is None or not raw.strip():
        return rt.default_fields()
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in rt.fields]
    if unknown:
        raise OracleError(UNKNOWN_FIELD, unknown[0], rt.name)
    return [rt.fields[n] for n in dict.fromkeys(names)]


def _with_id(rt: RecordType, fields: list[Field]) -> list[Field]:
    """The columns to read: the requested fields plus Id, which every link needs."""
    return fields if any(f.name == "Id" for f in fields) else [*fields, rt.fields["Id"]]


def _order_by(call: RestCall, rt: RecordType) -> list[tuple[str, bool]]:
    raw = call.query.get("orderBy", "").strip()
    order = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, direction = item.partition(":")
        direction = direction.strip().lower() or "asc"
        if name not in rt.fields:
            raise OracleError(UNKNOWN_FIELD, name, rt.name)
        if direction not in ("asc", "desc"):
            raise OracleError(BAD_PARAMETER, item, "orderBy", "write <field>:asc or <field>:desc")
        order.append((name, direction == "desc"))
    return order


def _body_record(call: RestCall, rt: RecordType, wrapper: str) -> dict[str, Any]:
    content_type = call.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ACCEPTED_BODIES:
        raise OracleError(MEDIA_TYPE, content_type)
    try:
        body = json.loads(call.body or b"null")
    except ValueError as exc:
        raise OracleError(BAD_BODY, f"not JSON ({exc})") from None
    records = body.get(wrapper) if isinstance(body, dict) else None
    if not isinstance(records, list) or len(records) != 1 or not isinstance(records[0], dict):
        raise OracleError(BAD_BODY, f'send {{"{wrapper}": [{{...one record...}}]}}')
    return dict(records[0])


def _to_storage(call: RestCall, rt: RecordType, values: Mapping[str, Any]) -> dict[str, Any]:
    stored = {}
    for name, raw in values.items():
        f = rt.fields.get(name)
        if f is None:
            raise OracleError(UNKNOWN_FIELD, name, rt.name)
        if not f.updatable:
            raise OracleError(READ_ONLY, name, rt.name)
        stored[name] = call.dialect.to_storage(rt, f, raw)
    return stored


# ---------------------------------------------------------------- rendering


def _record(call: RestCall, rt: RecordType, fields: list[Field], row: Mapping[str, Any], path: str) \
        -> dict[str, Any]:
    record = {f.name: call.dialect.from_storage(f, row.get(f.name)) for f in fields}
    if not call.only_data:
        record["links"] = _links(call, rt, row, path)
    return record


def _self_path(call: RestCall, rt: RecordType, row: Mapping[str, Any], parent: _Parent | None) -> str:
    record_id = row.get("Id") or ""
    return parent.path(call.base) + f"/{record_id}" if parent else f"{call.base}/{rt.resource}/{record_id}"


def _links(call: RestCall, rt: RecordType, row: Mapping[str, Any], path: str) -> dict[str, Any]:
    record_id = path.rsplit("/", 1)[-1]
    canonical = f"{call.base}/{rt.resource}/{record_id}"
    links: dict[str, Any] = {"self": {"rel": "self", "href": path}, "canonical": {"rel": "canonical",
                                                                                  "href": canonical}}
    if path != canonical:
        links["parent"] = {"rel": "parent", "href": path.split("/child/")[0]}
    for child in rt.children:
        links[child] = {"rel": "child", "href": f"{canonical}/child/{child}"}
    return links
