"""REST API handlers: resources, limits, describe, record CRUD, external-id get/upsert, Get Updated / Get
Deleted, and query / queryAll with `nextRecordsUrl` paging.

Each handler takes a `Call` and returns a Response; errors are raised as `SalesforceError` and rendered by the
dispatcher. Records are read back through the SOQL engine, so a record fetched by id is encoded exactly like the
same record in a query result.
"""
from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable
from urllib.parse import unquote_plus

from starlette.responses import Response

from .context import Call, json_response, no_content
from .describe import describe_global, describe_object, object_summary
from .errors import SalesforceError, not_found
from .model import ObjectDef
from .soql import QueryResult, SoqlError, execute
from .encoding import format_datetime, parse_datetime, random_id
from .store import MultipleMatches, WriteResult

MAX_BATCH, MIN_BATCH = 2000, 200
UPSERT_CREATED_FLAG_VERSION = 46.0  # from this version an upsert that updates answers 200 + "created": false
MAX_REPLICATION_IDS = 600_000

# ---------------------------------------------------------------- org-level resources


def resources(call: Call) -> Response:
    names = ("sobjects", "query", "queryAll", "limits", "composite", "jobs")
    return json_response({name: f"{call.base}/{name}" for name in names})


def limits(call: Call) -> Response:
    store, settings = call.sandbox.store, call.sandbox.settings

    def limit(maximum: int, used: int) -> dict[str, int]:
        return {"Max": maximum, "Remaining": max(0, maximum - used)}

    return json_response({
        "DailyApiRequests": limit(settings.daily_api_max, store.daily("api")),
        "DailyBulkApiBatches": limit(15000, store.daily("bulk_batches")),
        "DailyBulkApiRequests": limit(10000, store.daily("bulk_requests")),
        "DailyBulkV2QueryJobs": limit(10000, store.daily("bulk_query_jobs")),
        "DailyBulkV2QueryFileStorageMB": limit(976562, 0),
        "DataStorageMB": limit(1024, 0), "FileStorageMB": limit(1024, 0),
    })


def sobjects(call: Call) -> Response:
    return json_response(describe_global(call.sandbox.model, call.version))


def sobject_info(call: Call) -> Response:
    obj = _object(call)
    recent = [{"attributes": {"type": obj.name, "url": f"{call.base}/sobjects/{obj.name}/{r['Id']}"}, **r}
              for r in call.sandbox.store.recent(obj)]
    return json_response({"objectDescribe": object_summary(obj, call.version), "recentItems": recent})


def sobject_describe(call: Call) -> Response:
    return json_response(describe_object(call.sandbox.model, _object(call), call.version))


# ---------------------------------------------------------------- records


def record_create(call: Call) -> Response:
    obj = _object(call)
    result = _write(call, obj, "create", lambda assign: call.sandbox.store.create(
        obj.name, call.json_object(), user_id=call.user_id, auto_assign=assign))
    return json_response({"id": result.id, "success": True, "errors": []}, status=201)


def record_get(call: Call) -> Response:
    obj = _object(call)
    rid = call.sandbox.store.require_live(obj, call.params["record_id"])
    fields = [f.strip() for f in call.query["fields"].split(",")] if call.query.get("fields") else None
    return json_response(fetch_record(call, obj, rid, fields))


def record_update(call: Call) -> Response:
    obj = _object(call)
    _write(call, obj, "update", lambda assign: call.sandbox.store.update(
        obj.name, call.params["record_id"], call.json_object(), user_id=call.user_id, auto_assign=assign))
    return no_content()


def record_delete(call: Call) -> Response:
    obj = _object(call)
    rid = call.sandbox.store.delete(obj.name, call.params["record_id"], user_id=call.user_id)
    call.sandbox.stats.record_write(obj.name, "delete", rid)
    return no_content()


def ext_get(call: Call) -> Response:
    obj = _object(call)
    ids = _ext_matches(call, obj)
    if len(ids) > 1:
        return json_response([f"{call.base}/sobjects/{obj.name}/{i}" for i in ids], status=300)
    if not ids:
        raise not_found()
    return json_response(fetch_record(call, obj, ids[0]))


def ext_upsert(call: Call) -> Response:
    """PATCH sobjects/X/ExtField/value: 201 when created; 204 (or 200 + created:false from v46) when updated."""
    obj = _object(call)
    field = call.sandbox.store.external_id_field(obj, call.params["field"])
    body = call.json_object()
    for key in body:
        if key.lower() == "id" or key.lower() == field.name.lower():
            raise SalesforceError("INVALID_FIELD", f"{key} must not be in the body of an upsert by external id: "
                                  "the URL already carries it", [key])
    update_only = call.query.get("updateOnly", "").lower() == "true"
    try:
        result = _write(call, obj, "upsert", lambda assign: call.sandbox.store.upsert(
            obj.name, field.name, _ext_value(call), body, user_id=call.user_id, auto_assign=assign,
            update_only=update_only))
    except MultipleMatches as exc:
        return json_response([f"{call.base}/sobjects/{obj.name}/{i}" for i in exc.ids], status=300)
    flagged = call.version_number >= UPSERT_CREATED_FLAG_VERSION
    payload: dict[str, Any] = {"id": result.id, "success": True, "errors": []}
    if flagged:
        payload["created"] = result.created
    if result.created:
        return json_response(payload, status=201)
    return json_response(payload) if flagged else no_content()


def ext_delete(call: Call) -> Response:
    obj = _object(call)
    ids = _ext_matches(call, obj)
    if len(ids) > 1:
        return json_response([f"{call.base}/sobjects/{obj.name}/{i}" for i in ids], status=300)
    if not ids:
        raise not_found()
    call.sandbox.stats.record_write(obj.name, "delete", call.sandbox.store.delete(obj.name, ids[0],
                                                                                   user_id=call.user_id))
    return no_content()


def fetch_record(call: Call, obj: ObjectDef, rid: str, fields: list[str] | None = None) -> dict[str, Any]:
    """One record as REST returns it (all fields, or `fields`), read through the SOQL engine."""
    if fields is not None:
        fetch_fields_checked(obj, fields)
    names = fields or list(obj.fields)
    result = run_soql(call, f"SELECT {', '.join(names)} FROM {obj.name} WHERE Id = '{rid}'", include_deleted=True)
    if not result.records:
        raise not_found()
    return result.records[0]


def fetch_fields_checked(obj: ObjectDef, fields: list[str]) -> None:
    """Fields asked for by name must exist: Salesforce refuses the call with 400 INVALID_FIELD."""
    for name in fields:
        if obj.field(name) is None:
            raise SalesforceError("INVALID_FIELD", f"No such column '{name}' on entity '{obj.name}'. If you "
                                  "are attempting to use a custom field, be sure to append the '__c' after the "
                                  "custom field name.")


def _write(call: Call, obj: ObjectDef, operation: str, write: Callable[[bool], WriteResult]) -> WriteResult:
    """Run a store write with this call's Sforce-Auto-Assign decision, then count it in the admin stats."""
    assign, header = call.auto_assign()
    result = write(assign)
    call.sandbox.stats.record_write(obj.name, operation, result.id, header=header, assigned=result.assigned_owner,
                                    tracked=True)
    return result


def _ext_matches(call: Call, obj: ObjectDef) -> list[str]:
    store = call.sandbox.store
    return store.find(obj, store.external_id_field(obj, call.params["field"]), _ext_value(call))


def _ext_value(call: Call) -> str:
    """The external-id value from the raw path: simple-salesforce quote_plus-encodes it ('+' is a space)."""
    segments = call.raw_path.split("/")  # ['', 'sobjects', <object>, <field>, <value...>]
    return unquote_plus("/".join(segments[4:]))


def _object(call: Call) -> ObjectDef:
    return call.sandbox.store.object(call.params["sobject"])


# ---------------------------------------------------------------- Get Updated / Get Deleted


def updated(call: Call) -> Response:
    obj = _object(call)
    start, latest = _replication_window(call, max_age_days=30)
    ids = call.sandbox.store.updated_ids(obj, start, latest)
    _check_id_limit(ids)
    return json_response({"ids": ids, "latestDateCovered": latest})


def deleted(call: Call) -> Response:
    obj = _object(call)
    store = call.sandbox.store
    store.purge_recycle_bin()
    start, latest = _replication_window(call, max_age_days=store.settings.recycle_bin_days)
    records = store.deleted_records(obj, start, latest)
    _check_id_limit(records)
    earliest = _minute(parse_datetime(store.earliest_deleted_available()))
    return json_response({"deletedRecords": [{"id": i, "deletedDate": d} for i, d in records],
                          "earliestDateAvailable": format_datetime(earliest), "latestDateCovered": latest})


def _replication_window(call: Call, max_age_days: int) -> tuple[str, str]:
    """Parse start/end (seconds truncated) and check them as Salesforce does; returns (start, latestDateCovered)."""
    moments = {}
    for name in ("start", "end"):
        text = call.query.get(name)
        if not text:
            raise SalesforceError("MISSING_ARGUMENT", f"Missing required parameter: {name}")
        try:
            moments[name] = _minute(parse_datetime(text))
        except ValueError:
            raise SalesforceError("MALFORMED_QUERY", f"{name} date is not in the correct format: {text}") from None
    now = call.sandbox.store.now()
    if moments["start"] < _minute(now - timedelta(days=max_age_days)):
        raise SalesforceError("INVALID_REPLICATION_DATE", f"startDate cannot be more than {max_age_days} days ago")
    if moments["end"] - moments["start"] < timedelta(minutes=1):
        raise SalesforceError("INVALID_REPLICATION_DATE", "startDate must be at least one minute greater than "
                              "endDate")
    latest = min(moments["end"], _minute(now))
    return format_datetime(moments["start"]), format_datetime(latest)


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _check_id_limit(items: list[Any]) -> None:
    if len(items) > MAX_REPLICATION_IDS:
        raise SalesforceError("EXCEEDED_ID_LIMIT", f"The number of ids exceeds {MAX_REPLICATION_IDS}; narrow the "
                              "date range")


# ---------------------------------------------------------------- query / queryAll


def query(call: Call) -> Response:
    return _first_page(call, include_deleted=False)


def query_all(call: Call) -> Response:
    return _first_page(call, include_deleted=True)


def query_more(call: Call) -> Response:
    locator, _, offset = call.params["cursor"].rpartition("-")
    if not locator or not offset.isdigit():
        raise SalesforceError("INVALID_QUERY_LOCATOR", "invalid query locator")
    return json_response(call.sandbox.cursors.page(locator, int(offset), call.base))


def _first_page(call: Call, include_deleted: bool) -> Response:
    soql = call.query.get("q")
    if not soql:
        raise SalesforceError("MALFORMED_QUERY", "A query string has to be specified")
    result = run_soql(call, soql, include_deleted=include_deleted)
    return json_response(call.sandbox.cursors.open(result, batch_size(call.headers), call.base))


def run_soql(call: Call, soql: str, *, include_deleted: bool, records: bool = True) -> QueryResult:
    try:
        return execute(call.sandbox.store.conn, call.sandbox.model, soql, include_deleted=include_deleted,
                       api_version=call.version, now=call.sandbox.store.now(), records=records)
    except SoqlError as exc:
        raise SalesforceError(exc.error_code, exc.message) from None


def batch_size(headers: Any) -> int:
    """`Sforce-Query-Options: batchSize=N`, honoured within 200-2000 (Salesforce treats it as a hint)."""
    match = re.search(r"batchSize\s*=\s*(\d+)", headers.get("sforce-query-options", ""), re.IGNORECASE)
    return min(MAX_BATCH, max(MIN_BATCH, int(match.group(1)))) if match else MAX_BATCH


@dataclass
class _Cursor:
    records: list[dict[str, Any]]
    total: int
    batch: int
    touched: float


class QueryCursors:
    """Server-side query locators: the rest of a result, kept for `idle_seconds` after its last use."""

    def __init__(self, max_open: int = 20, idle_seconds: float = 900) -> None:
        self._open: OrderedDict[str, _Cursor] = OrderedDict()
        self.max_open, self.idle_seconds = max_open, idle_seconds

    def open(self, result: QueryResult, batch: int, base: str) -> dict[str, Any]:
        if len(result.records) <= batch:
            return {"totalSize": result.total_size, "done": True, "records": result.records}
        locator = random_id("01g")
        self._open[locator] = _Cursor(result.records, result.total_size, batch, time.monotonic())
        self._evict()
        return self.page(locator, 0, base)

    def page(self, locator: str, offset: int, base: str) -> dict[str, Any]:
        cursor = self._open.get(locator)
        if cursor is None or offset > len(cursor.records):
            raise SalesforceError("INVALID_QUERY_LOCATOR", "invalid query locator")
        cursor.touched = time.monotonic()
        self._open.move_to_end(locator)
        end = offset + cursor.batch
        page: dict[str, Any] = {"totalSize": cursor.total, "done": end >= len(cursor.records)}
        if not page["done"]:
            page["nextRecordsUrl"] = f"{base}/query/{locator}-{end}"
        page["records"] = cursor.records[offset:end]
        return page

    def _evict(self) -> None:
        cutoff = time.monotonic() - self.idle_seconds
        for locator in [k for k, c in self._open.items() if c.touched < cutoff]:
            del self._open[locator]
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
