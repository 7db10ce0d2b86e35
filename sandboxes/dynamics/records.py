"""Entity-set endpoints: query (with paging and change tracking), create, retrieve, update/upsert, delete, single
properties, and the CreateMultiple / UpdateMultiple / UpsertMultiple actions.

Behaviour follows learn.microsoft.com/power-apps/developer/data-platform/webapi/:
  * query-data-web-api, query/page-results: `$select $filter $orderby $top $count $expand`, `Prefer:
    odata.maxpagesize` (<= 5,000, default 5,000), an absolute `@odata.nextLink` with `$skiptoken`, `$top` ignored
    when a page size is preferred, `$skip` refused, `@odata.count` capped at 5,000
  * use-change-tracking-synchronize-data-external-systems: `Prefer: odata.track-changes` returns all rows and, on
    the last page, `@odata.deltaLink`; the delta link returns new/updated rows, then `$deletedEntity` rows;
    `$filter $orderby $expand $top` are refused with the documented message
  * create-entity-web-api, update-delete-entities-using-web-api, perform-conditional-operations-using-web-api,
    use-upsert-insert-update-record: 204 + `OData-EntityId` (201/200 with `return=representation`), upsert by id
    or alternate key, `If-Match: *`, `If-Match: W/"<version>"` (412 on mismatch), `If-None-Match: *`
  * bulk-operations (CreateMultiple, UpdateMultiple, UpsertMultiple): `Targets` with `@odata.type`, atomic
"""
from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import quote, urlencode

from starlette.responses import Response

from .context import Call, respond
from .errors import (CONCURRENCY_VERSION_MISMATCH, DUPLICATE_RECORD, INVALID_PROPERTY, DataverseError, bad_request,
                     no_property, not_found)
from .model import Entity
from .odata import parse_expand, parse_filter, parse_orderby, parse_select, to_sql
from .paging import Cookie, decode_cookie, delta_token, read_delta_token
from .values import LookupNames, expand, render, resolve, to_storage

_LINK_SAFE = "$,()'=:"  # left unescaped in links, as Dataverse leaves them
_TRACKING_REFUSED = ("$filter", "$orderby", "$expand", "$top")
_KNOWN_OPTIONS = {"$select", "$filter", "$orderby", "$top", "$count", "$expand", "$skiptoken", "$deltatoken",
                  "$format"}


# ---------------------------------------------------------------- queries

def query(call: Call, entity: Entity) -> Response:
    """GET /<entityset>: a page of rows, or a change-tracking page when tracking was asked for."""
    for option in call.query:
        if option.startswith("$") and option not in _KNOWN_OPTIONS:
            raise bad_request(f"The query parameter {option} is not supported", INVALID_PROPERTY)
    tracking = call.prefer.track_changes or "$deltatoken" in call.query
    if tracking:
        for option in _TRACKING_REFUSED:
            if option in call.query:
                raise bad_request(f'The "{option}" query parameter isn\'t supported when Change Tracking is '
                                  "enabled.", INVALID_PROPERTY)
        if not call.sandbox.tracks_changes(entity):
            raise bad_request(f"Change tracking isn't enabled for the {entity.name} table.", INVALID_PROPERTY)
    select = _checked_select(entity, call.query.get("$select"))
    cookie = decode_cookie(call.query["$skiptoken"]) if "$skiptoken" in call.query else None
    size = _page_size(call, cookie)
    if "$deltatoken" in call.query:
        return _delta_page(call, entity, select, size, cookie)
    return _page(call, entity, select, size, cookie, tracking)


def _checked_select(entity: Entity, text: str | None) -> list[str] | None:
    select = parse_select(text)
    for name in select or ():
        if entity.by_value_property(name) is None:
            raise no_property(name, entity.name)
    return select


def _page_size(call: Call, cookie: Cookie | None) -> int:
    maximum = call.sandbox.settings.max_page_size
    wanted = call.prefer.max_page_size
    if wanted is not None:
        if wanted <= 0:
            raise bad_request("odata.maxpagesize must be a positive number.")
        call.applied.append(f"odata.maxpagesize={wanted}")
        return min(wanted, maximum)
    return cookie.size if cookie else maximum


def _page(call: Call, entity: Entity, select: list[str] | None, size: int, cookie: Cookie | None,
          tracking: bool) -> Response:
    store = call.sandbox.store
    where, params = "", []
    if "$filter" in call.query:
        where, params = to_sql(parse_filter(call.query["$filter"]), entity, store.now(), call.user_id)
    order = parse_orderby(call.query["$orderby"]) if "$orderby" in call.query else []
    for name, _ in order:
        if entity.by_value_property(name) is None:
            raise no_property(name, entity.name)
    top = _top(call) if call.prefer.max_page_size is None and cookie is None else None
    limit = top if top is not None else size
    page_where, page_params, offset = where, list(params), 0
    if order:
        offset = (cookie.page - 1) * size if cookie else 0
    elif cookie and cookie.last:
        page_where = f"({where}) AND " if where else ""
        page_where += f'"{entity.primary_id}" > ?'
        page_params.append(cookie.last)
    sql_order = ", ".join(f'"{entity.by_value_property(n).name}" {"DESC" if d else "ASC"}'  # type: ignore[union-attr]
                          for n, d in order)
    sql_order = (sql_order + ", " if sql_order else "") + f'"{entity.primary_id}"'
    if order:
        rows = store.select(entity, page_where, page_params, f"{sql_order} LIMIT {limit + 1} OFFSET {offset}")
    else:
        rows = store.select(entity, page_where, page_params, sql_order, limit=limit + 1)
    more = top is None and len(rows) > limit
    rows = rows[:limit]
    names = LookupNames(call)
    expansions = parse_expand(call.query["$expand"]) if "$expand" in call.query else []
    body: dict[str, Any] = {"@odata.context": _context(call, entity, select)}
    if call.query.get("$count", "").lower() == "true":
        total = store.count(entity, where, params)
        cap = call.sandbox.settings.max_count
        body["@odata.count"] = min(total, cap)
        if total > cap:
            body["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] = True
    body["value"] = [_row(call, entity, row, select, expansions, names) for row in rows]
    snapshot = cookie.snapshot if cookie and cookie.snapshot is not None else store.current_version()
    if more:
        following = Cookie(page=(cookie.page if cookie else 1) + 1, size=size,
                           last=None if order else rows[-1][entity.primary_id],
                           snapshot=snapshot if tracking else None, tracking=tracking)
        body["@odata.nextLink"] = _link(call, {"$skiptoken": following.encode(entity.primary_id)})
    elif tracking:
        body["@odata.deltaLink"] = _link(call, {"$deltatoken": delta_token(snapshot, store.now())})
    if tracking:
        call.applied.append("odata.track-changes")
    return _json(call, body)


def _top(call: Call) -> int | None:
    if "$top" not in call.query:
        return None
    try:
        top = int(call.query["$top"])
    except ValueError:
        raise bad_request(f"Invalid value '{call.query['$top']}' for $top query option found.",
                          INVALID_PROPERTY) from None
    if top < 0:
        raise bad_request(f"Invalid value '{top}' for $top query option found.", INVALID_PROPERTY)
    return min(top, call.sandbox.settings.max_page_size)


def _delta_page(call: Call, entity: Entity, select: list[str] | None, size: int, cookie: Cookie | None) \
        -> Response:
    """New/updated rows (by row version), then deleted rows, since the token's version."""
    store = call.sandbox.store
    since = read_delta_token(call.query["$deltatoken"], store.now(), call.sandbox.settings.expire_change_tracking_days)
    snapshot = cookie.snapshot if cookie and cookie.snapshot is not None else store.current_version()
    phase, after = (cookie.phase, cookie.after) if cookie else ("rows", None)
    after = since if after is None else after
    values: list[dict[str, Any]] = []
    names = LookupNames(call)
    if phase == "rows":
        rows = store.select(entity, '"versionnumber" > ? AND "versionnumber" <= ?', [after, snapshot],
                            '"versionnumber"', limit=size + 1)
        values = [_row(call, entity, row, select, [], names) for row in rows[:size]]
        if len(rows) > size:
            return _delta_body(call, entity, select, values, Cookie(
                page=(cookie.page if cookie else 1) + 1, size=size, snapshot=snapshot, phase="rows",
                after=int(rows[size - 1]["versionnumber"]), tracking=True))
        phase, after = "deleted", since
    room = size - len(values)
    deleted = store.deletions(entity, after, snapshot, room + 1)
    context = f"{call.service_root}/$metadata#{entity.entity_set}/$deletedEntity"
    values += [{"@odata.context": context, "id": record_id, "reason": "deleted"} for record_id, _ in deleted[:room]]
    if len(deleted) > room:
        last = deleted[room - 1][1] if room > 0 else after
        return _delta_body(call, entity, select, values, Cookie(
            page=(cookie.page if cookie else 1) + 1, size=size, snapshot=snapshot, phase="deleted", after=last,
            tracking=True))
    return _delta_body(call, entity, select, values, None, final_version=snapshot)


def _delta_body(call: Call, entity: Entity, select: list[str] | None, values: list[dict[str, Any]],
                following: Cookie | None, final_version: int | None = None) -> Response:
    body: dict[str, Any] = {"@odata.context": _context(call, entity, select) + "/$delta", "value": values}
    if following is not None:
        body["@odata.nextLink"] = _link(call, {"$skiptoken": following.encode(entity.primary_id)})
    else:
        token = delta_token(final_version or 0, call.sandbox.store.now())
        body["@odata.deltaLink"] = _link(call, {"$deltatoken": token}, drop=("$skiptoken", "$deltatoken"))
    call.applied.append("odata.track-changes")
    return _json(call, body)


def count_rows(call: Call, entity: Entity) -> Response:
    """GET /<entityset>/$count: a plain number (capped at 5,000), or the number of changes with $deltatoken."""
    store = call.sandbox.store
    if "$deltatoken" in call.query:
        since = read_delta_token(call.query["$deltatoken"], store.now(),
                                 call.sandbox.settings.expire_change_tracking_days)
        current = store.current_version()
        total = store.count(entity, '"versionnumber" > ?', [since]) + \
            len(store.deletions(entity, since, current, 1_000_000))
    else:
        where, params = ("", [])
        if "$filter" in call.query:
            where, params = to_sql(parse_filter(call.query["$filter"]), entity, store.now(), call.user_id)
        total = min(store.count(entity, where, params), call.sandbox.settings.max_count)
    return respond(200, str(total).encode(), media_type="text/plain")


def _row(call: Call, entity: Entity, row: Mapping[str, Any], select: list[str] | None,
         expansions: list[tuple[str, dict[str, str]]], names: LookupNames) -> dict[str, Any]:
    out = render(entity, row, select, call.prefer, names)
    if expansions:
        expand(call, entity, row, out, expansions, names, lambda n: _raise(no_property(n, entity.name)))
    return out


def _raise(error: Exception) -> None:
    raise error


def _context(call: Call, entity: Entity, select: list[str] | None) -> str:
    columns = f"({','.join(select)})" if select else ""
    return f"{call.service_root}/$metadata#{entity.entity_set}{columns}"


def _link(call: Call, extra: dict[str, str], drop: tuple[str, ...] = ("$skiptoken",)) -> str:
    """An absolute link to the same query with `extra` parameters: every needed option is in the query string."""
    params = {k: v for k, v in call.query.items() if k not in drop and k not in extra}
    params.update(extra)
    return f"{call.service_root}{call.path}?{urlencode(params, safe=_LINK_SAFE, quote_via=quote)}"


def _json(call: Call, body: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
    extra = list(headers or [])
    if call.applied:
        extra.append(("Preference-Applied", ",".join(call.applied)))
    return respond(status, body, extra)


# ---------------------------------------------------------------- single records

def retrieve(call: Call, entity: Entity, key: str) -> Response:
    record_id, _ = resolve(call, entity, key)
    row = call.sandbox.store.get(entity, record_id) if record_id else None
    if row is None:
        raise not_found(entity.name, key)
    select = _checked_select(entity, call.query.get("$select"))
    if call.headers.get("if-none-match", "").strip() == f'W/"{row["versionnumber"]}"':
        return respond(304)
    _note_annotations(call)
    expansions = parse_expand(call.query["$expand"]) if "$expand" in call.query else []
    body = {"@odata.context": f"{_context(call, entity, select)}/$entity",
            **_row(call, entity, row, select, expansions, LookupNames(call))}
    return _json(call, body)


def create(call: Call, entity: Entity) -> Response:
    values = to_storage(call, entity, call.json_object(), creating=True)
    record_id = call.sandbox.store.insert(entity, values, user_id=call.user_id,
                                          record_id=values.pop(entity.primary_id, None))
    call.sandbox.stats.record_write(entity.entity_set, "create")
    return _written(call, entity, record_id, created=True)


def upsert(call: Call, entity: Entity, key: str) -> Response:
    """PATCH /<entityset>(<key>): update, or create when absent, under If-Match / If-None-Match."""
    existing, alternate = resolve(call, entity, key)
    _check_conditions(call, entity, existing, key)
    store = call.sandbox.store
    if existing is not None:
        values = to_storage(call, entity, call.json_object(), creating=False)
        values.pop(entity.primary_id, None)
        store.update(entity, existing, values, user_id=call.user_id)
        call.sandbox.stats.record_write(entity.entity_set, "update")
        return _written(call, entity, existing, created=False)
    values = to_storage(call, entity, call.json_object(), creating=True)
    values.update(alternate or {})
    new_id = store.insert(entity, values, user_id=call.user_id,
                          record_id=None if alternate else _guid_of(entity, key))
    call.sandbox.stats.record_write(entity.entity_set, "create")
    return _written(call, entity, new_id, created=True)


def _guid_of(entity: Entity, key: str) -> str | None:
    from .values import parse_key
    return parse_key(entity, key)[0]


def _check_conditions(call: Call, entity: Entity, existing: str | None, key: str) -> None:
    if_match, if_none_match = call.headers.get("if-match"), call.headers.get("if-none-match")
    if if_none_match is not None and if_none_match.strip() == "*" and existing is not None:
        raise DataverseError(412, DUPLICATE_RECORD, "A record with matching key values already exists.")
    if if_match is None:
        return
    if existing is None:
        raise not_found(entity.name, key)
    if if_match.strip() != "*":
        row = call.sandbox.store.get(entity, existing) or {}
        if if_match.strip() != f'W/"{row.get("versionnumber")}"':
            raise DataverseError(412, CONCURRENCY_VERSION_MISMATCH, "The version of the existing record doesn't "
                                 "match the RowVersion property provided.")


def _written(call: Call, entity: Entity, record_id: str, *, created: bool) -> Response:
    entity_id = f"{call.service_root}/{entity.entity_set}({record_id})"
    headers = [("OData-EntityId", entity_id)]
    if not call.prefer.return_representation:
        return respond(204, None, headers)
    call.applied.append("return=representation")
    _note_annotations(call)
    select = _checked_select(entity, call.query.get("$select"))
    row = call.sandbox.store.get(entity, record_id) or {}
    body = {"@odata.context": f"{_context(call, entity, select)}/$entity",
            **render(entity, row, select, call.prefer, LookupNames(call))}
    return _json(call, body, 201 if created else 200, headers)


def _note_annotations(call: Call) -> None:
    if call.prefer.include_annotations:
        call.applied.append(f'odata.include-annotations="{call.prefer.include_annotations}"')


def delete(call: Call, entity: Entity, key: str) -> Response:
    existing, _ = resolve(call, entity, key)
    if existing is None:
        raise not_found(entity.name, key)
    if_match = call.headers.get("if-match")
    if if_match and if_match.strip() != "*":
        row = call.sandbox.store.get(entity, existing) or {}
        if if_match.strip() != f'W/"{row.get("versionnumber")}"':
            raise DataverseError(412, CONCURRENCY_VERSION_MISMATCH, "The version of the existing record doesn't "
                                 "match the RowVersion property provided.")
    call.sandbox.store.delete(entity, existing, user_id=call.user_id)
    call.sandbox.stats.record_write(entity.entity_set, "delete")
    return respond(204)


def property_value(call: Call, entity: Entity, key: str, name: str, raw: bool) -> Response:
    """GET /<entityset>(<key>)/<property>[/$value]; 204 when the value is null."""
    record_id, _ = resolve(call, entity, key)
    row = call.sandbox.store.get(entity, record_id) if record_id else None
    if row is None:
        raise not_found(entity.name, key)
    attr = entity.by_value_property(name)
    if attr is None:
        raise no_property(name, entity.name)
    value = render(entity, row, [name], call.prefer).get(attr.value_property)
    if value is None:
        return respond(204)
    if raw:
        return respond(200, str(value).encode(), media_type="text/plain")
    return respond(200, {"@odata.context": f"{call.service_root}/$metadata#{entity.entity_set}({record_id})/{name}",
                         "value": value})


def property_write(call: Call, entity: Entity, key: str, name: str) -> Response:
    """PUT /<entityset>(<key>)/<property> {"value": v} sets one column; DELETE clears it."""
    record_id, _ = resolve(call, entity, key)
    if record_id is None:
        raise not_found(entity.name, key)
    value = call.json_object().get("value") if call.method == "PUT" else None
    values = to_storage(call, entity, {name: value}, creating=False)
    if not values:
        raise bad_request(f"The property '{name}' can't be updated.", INVALID_PROPERTY)
    call.sandbox.store.update(entity, record_id, values, user_id=call.user_id)
    call.sandbox.stats.record_write(entity.entity_set, "update")
    return respond(204)


# ---------------------------------------------------------------- bulk actions

def _targets(call: Call, entity: Entity) -> list[dict[str, Any]]:
    body = call.json_object()
    targets = body.get("Targets")
    if not isinstance(targets, list) or not targets:
        raise bad_request("The Targets parameter must be a non-empty collection of entities.")
    for target in targets:
        if not isinstance(target, dict):
            raise bad_request("Each item of Targets must be an entity object.")
        kind = str(target.get("@odata.type", "")).lstrip("#")
        if kind != f"Microsoft.Dynamics.CRM.{entity.name}":
            raise bad_request(f"Each item of Targets must carry \"@odata.type\": \"Microsoft.Dynamics.CRM."
                              f"{entity.name}\" (found {kind or 'none'}).")
    return targets


def create_multiple(call: Call, entity: Entity) -> Response:
    targets, store, ids = _targets(call, entity), call.sandbox.store, []
    with store.atomic():
        for target in targets:
            values = to_storage(call, entity, target, creating=True)
            ids.append(store.insert(entity, values, user_id=call.user_id, record_id=values.pop(entity.primary_id,
                                                                                                None)))
    call.sandbox.stats.record_write(entity.entity_set, "create", len(ids))
    return respond(200, {"@odata.context": f"{call.service_root}/$metadata#Microsoft.Dynamics.CRM."
                                           "CreateMultipleResponse", "Ids": ids})


def update_multiple(call: Call, entity: Entity) -> Response:
    targets, store = _targets(call, entity), call.sandbox.store
    with store.atomic():
        for target in targets:
            record_id = target.get(entity.primary_id)
            if not record_id or store.get(entity, str(record_id)) is None:
                raise not_found(entity.name, str(record_id))
            values = to_storage(call, entity, target, creating=False)
            store.update(entity, str(record_id).lower(), values, user_id=call.user_id)
    call.sandbox.stats.record_write(entity.entity_set, "update", len(targets))
    return respond(204)


def upsert_multiple(call: Call, entity: Entity) -> Response:
    """Each target names its record by `@odata.id` (id or alternate key), its primary id, or its key columns."""
    targets, store, results = _targets(call, entity), call.sandbox.store, []
    with store.atomic():
        for target in targets:
            existing, alternate, given_id = _upsert_target(call, entity, target)
            if existing is not None:
                values = to_storage(call, entity, target, creating=False)
                store.update(entity, existing, values, user_id=call.user_id)
                results.append((False, existing))
            else:
                values = {**to_storage(call, entity, target, creating=True), **(alternate or {})}
                values.pop(entity.primary_id, None)
                results.append((True, store.insert(entity, values, user_id=call.user_id, record_id=given_id)))
    for created, _ in results:
        call.sandbox.stats.record_write(entity.entity_set, "create" if created else "update")
    return respond(200, {"@odata.context": f"{call.service_root}/$metadata#Microsoft.Dynamics.CRM."
                                           "UpsertMultipleResponse",
                         "Results": [{"RecordCreated": created, "Target": {
                             "@odata.type": f"#Microsoft.Dynamics.CRM.{entity.name}", entity.primary_id: rid}}
                                     for created, rid in results]})


def _upsert_target(call: Call, entity: Entity, target: dict[str, Any]) \
        -> tuple[str | None, dict[str, str] | None, str | None]:
    reference = target.get("@odata.id")
    if isinstance(reference, str):
        segment = reference.rsplit("(", 1)[-1].rstrip(")") if "(" in reference else ""
        existing, alternate = resolve(call, entity, segment)
        from .values import parse_key
        return existing, alternate, parse_key(entity, segment)[0]
    if target.get(entity.primary_id):
        record_id = str(target[entity.primary_id]).lower()
        return (record_id if call.sandbox.store.get(entity, record_id) else None), None, record_id
    for key in entity.keys:
        if all(target.get(a) is not None for a in key.attributes):
            values = {a: str(target[a]) for a in key.attributes}
            return call.sandbox.store.find_by_key(entity, values), values, None
    raise bad_request("Each UpsertMultiple target needs @odata.id, its primary key or its alternate key values.")
