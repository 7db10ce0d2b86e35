"""sObject Collections (`composite/sobjects`) and `composite/batch`.

Collections run up to 200 records in one call. The answer is HTTP 200 with one result per input, in input
order, whatever happened to each record; per-record errors use `statusCode` (not `errorCode`). With
`allOrNone` one failure rolls the whole call back and every other record reports
ALL_OR_NONE_OPERATION_ROLLED_BACK. Each record runs in its own savepoint inside one transaction, which gives
both behaviours from the same loop.

Before any record runs, the request body is read into typed sObjects, as Salesforce does: a value its field's
type cannot hold (text in a date or number field, an object or array where a value belongs) refuses the *whole*
request with HTTP 400 JSON_PARSER_ERROR, "Cannot deserialize instance of date from VALUE_STRING value
2024-02-30 or request may be missing a required field at [line:1, column:N]", and no record is processed
("If the request isn't well formed, the API returns a 400 Bad Request HTTP Status",
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_sobjects_collections_update.htm;
the message is Salesforce's own deserialization error). Everything else — a too-long string, a validation rule,
a duplicate — is decided per record.

`composite/batch` runs up to 25 sub-requests through the normal dispatcher (sub-request URLs may be
`/services/data/vXX.X/...` or `vXX.X/...`) and counts as one API request.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote, urlsplit

from starlette.responses import Response

from .context import Call, json_response
from .errors import SalesforceError
from .encoding import coerce, normalize_id
from .rest import fetch_fields_checked, run_soql
from .store import WriteResult

MAX_RECORDS = 200
MAX_SUBREQUESTS = 25
_ROLLED_BACK = SalesforceError("ALL_OR_NONE_OPERATION_ROLLED_BACK", "Record rolled back because not all records "
                               "were valid and the request was using AllOrNone header")

# One record's operation: returns (result entry, (object, operation, write result) for the stats).
RecordOp = Callable[[Any], tuple[dict[str, Any], tuple[str, str, WriteResult]]]


def collections_create(call: Call) -> Response:
    body = call.json_object()

    def create(record: Any) -> tuple[dict[str, Any], tuple[str, str, WriteResult]]:
        object_name = _type_of(record)
        assign, _ = call.auto_assign()
        result = call.sandbox.store.create(object_name, record, user_id=call.user_id, auto_assign=assign)
        return {"id": result.id, "success": True, "errors": []}, (object_name, "create", result)

    return _run(call, _deserialized(call, _records(body)), bool(body.get("allOrNone")), create, id_of=lambda r: None)


def collections_update(call: Call) -> Response:
    body = call.json_object()

    def update(record: Any) -> tuple[dict[str, Any], tuple[str, str, WriteResult]]:
        object_name, rid = _type_of(record), _checked_id(record.get("id") or record.get("Id"))
        values = {k: v for k, v in record.items() if k.lower() != "id"}
        assign, _ = call.auto_assign()
        result = call.sandbox.store.update(object_name, rid, values, user_id=call.user_id, auto_assign=assign)
        return {"id": result.id, "success": True, "errors": []}, (object_name, "update", result)

    return _run(call, _deserialized(call, _records(body)), bool(body.get("allOrNone")), update,
                id_of=lambda r: r.get("id") if isinstance(r, dict) else None)


def collections_delete(call: Call) -> Response:
    ids = [i for i in call.query.get("ids", "").split(",") if i]
    if not ids:
        raise SalesforceError("MISSING_ARGUMENT", "ids: no ids provided")
    _check_size(ids)
    store = call.sandbox.store

    def delete(raw_id: str) -> tuple[dict[str, Any], tuple[str, str, WriteResult]]:
        rid = _checked_id(raw_id)
        obj = next((o for o in store.model.objects.values() if rid.startswith(o.key_prefix)), None)
        if obj is None:
            raise SalesforceError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
        store.delete(obj.name, rid, user_id=call.user_id)
        return {"id": rid, "success": True, "errors": []}, (obj.name, "delete", WriteResult(rid, False))

    return _run(call, ids, call.query.get("allOrNone", "").lower() == "true", delete, id_of=lambda i: i)


MAX_RETRIEVE = 2000
SOQL_IN_CHUNK = 500  # ids per IN list of the sandbox's SQL (SQLite refuses expression trees deeper than 1,000)


def collections_retrieve(call: Call) -> Response:
    """POST composite/sobjects/{Type} {"ids": [...], "fields": [...]}: up to 2,000 records of one type in one call,
    one entry per id in request order — the record (its `attributes`, `Id` and the fields asked for), or null for
    an id that is malformed or not a live record of the type. An unknown field refuses the call (400
    INVALID_FIELD), as Salesforce does
    (https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_sobjects_collections_retrieve_post.htm)."""
    obj = call.sandbox.store.object(call.params["sobject"])
    body = call.json_object()
    ids, fields = body.get("ids"), body.get("fields")
    if not isinstance(ids, list) or not ids:
        raise SalesforceError("MISSING_ARGUMENT", "ids: no ids provided")
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
        raise SalesforceError("MISSING_ARGUMENT", "fields: no fields provided")
    if len(ids) > MAX_RETRIEVE:
        raise SalesforceError("EXCEEDED_ID_LIMIT", f"record limit reached. cannot submit more than {MAX_RETRIEVE} "
                              "records into this call")
    fetch_fields_checked(obj, fields)
    normalized = [normalize_id(i) if isinstance(i, str) else None for i in ids]
    names = list(dict.fromkeys(["Id", *fields]))
    found, ordered = {}, sorted({rid[:15] for rid in normalized if rid})
    for start in range(0, len(ordered), SOQL_IN_CHUNK):
        listed = ", ".join(f"'{rid}'" for rid in ordered[start:start + SOQL_IN_CHUNK])
        found.update({str(r["Id"])[:15]: r for r in run_soql(
            call, f"SELECT {', '.join(names)} FROM {obj.name} WHERE Id IN ({listed})", include_deleted=False).records})
    return json_response([found.get(rid[:15]) if rid else None for rid in normalized])


def collections_upsert(call: Call) -> Response:
    """PATCH composite/sobjects/{Type}/{ExtIdField}: one type, results carry `created`."""
    body = call.json_object()
    store = call.sandbox.store
    obj = store.object(call.params["sobject"])
    field = store.external_id_field(obj, call.params["field"])

    def upsert(record: Any) -> tuple[dict[str, Any], tuple[str, str, WriteResult]]:
        if _type_of(record, default=obj.name).lower() != obj.name.lower():
            raise SalesforceError("INVALID_TYPE", f"all records must be of type {obj.name}")
        key = next((v for k, v in record.items() if k.lower() == field.name.lower()), None)
        if key in (None, ""):
            raise SalesforceError("MISSING_ARGUMENT", f"{field.name} not specified", [field.name])
        values = {k: v for k, v in record.items() if k.lower() != field.name.lower()}
        assign, _ = call.auto_assign()
        result = store.upsert(obj.name, field.name, key, values, user_id=call.user_id, auto_assign=assign)
        return ({"id": result.id, "success": True, "errors": [], "created": result.created},
                (obj.name, "upsert", result))

    return _run(call, _deserialized(call, _records(body), obj.name), bool(body.get("allOrNone")), upsert,
                id_of=lambda r: None)


def _run(call: Call, items: list[Any], all_or_none: bool, operation: RecordOp,
         id_of: Callable[[Any], str | None]) -> Response:
    store, stats = call.sandbox.store, call.sandbox.stats
    results: list[dict[str, Any]] = []
    writes: list[tuple[str, str, WriteResult]] = []
    with store.atomic() as transaction:
        for item in items:
            try:
                with store.atomic():
                    entry, write = operation(item)
                results.append(entry)
                writes.append(write)
            except SalesforceError as exc:
                results.append(_failure(exc, id_of(item)))
        failed = any(not r["success"] for r in results)
        if all_or_none and failed:
            transaction.rollback()
            results = [r if not r["success"] else _failure(_ROLLED_BACK, id_of(item))
                       for item, r in zip(items, results)]
            writes = []
    _, header = call.auto_assign()
    for object_name, op, result in writes:
        stats.record_write(object_name, op, result.id, header=header, assigned=result.assigned_owner,
                           tracked=op != "delete", source="composite")
    return json_response(results)


def _failure(error: SalesforceError, record_id: str | None) -> dict[str, Any]:
    if error.code == "NOT_FOUND":  # per-record wording for an id that names no record
        error = SalesforceError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", error.fields)
    entry: dict[str, Any] = {"success": False, "errors": [error.record_error()]}
    if record_id:
        entry = {"id": record_id, **entry}
    return entry


def _records(body: dict[str, Any]) -> list[Any]:
    records = body.get("records")
    if not isinstance(records, list) or not records:
        raise SalesforceError("JSON_PARSER_ERROR", "records: a non-empty array of sObjects is required")
    _check_size(records)
    return records


def _deserialized(call: Call, records: list[Any], default_type: str | None = None) -> list[Any]:
    """`records`, once every value of a known field has a JSON type its field can take; otherwise the whole
    request is refused (JSON_PARSER_ERROR, with where the value is in the body). Unknown types and fields, and
    relationship values ({"Account": {"Key__c": …}}), are left to the per-record checks."""
    model = call.sandbox.model
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            continue
        attributes = record.get("attributes")
        obj = model.object((attributes.get("type") if isinstance(attributes, dict) else None) or default_type or "")
        if obj is None:
            continue
        for key, value in record.items():
            field = obj.field(key) if key != "attributes" and key.lower() != "id" else None
            if field is None or _relationship_value(value):
                continue
            try:
                coerce(field, value, csv=False)
            except SalesforceError as exc:
                if exc.code != "JSON_PARSER_ERROR":
                    raise
                line, column = _position(call.body, index, key)
                raise SalesforceError("JSON_PARSER_ERROR", f"{exc.message} at [line:{line}, column:{column}]") from None
    return records


def _relationship_value(value: Any) -> bool:
    return isinstance(value, dict) and len([k for k in value if k != "attributes"]) == 1


def _position(body: bytes, index: int, key: str) -> tuple[int, int]:
    """Line and column (1-based) just after the value of `key` in record `index` of the body's `records`
    array, where Salesforce's parser stops; (1, 1) when the body cannot be walked."""
    text, decoder = body.decode("utf-8", "replace"), json.JSONDecoder()
    try:
        start = re.search(r'"records"\s*:\s*\[', text)
        position = start.end() if start else 0
        for _ in range(index + 1):
            position = len(text) - len(text[position:].lstrip(" \t\r\n,"))
            record_start = position
            _, position = decoder.raw_decode(text, position)
        found = re.compile(re.escape(json.dumps(key)) + r"\s*:\s*").search(text, record_start, position)
        _, end = decoder.raw_decode(text, found.end()) if found else (None, record_start)
    except (ValueError, AttributeError):
        return 1, 1
    return text.count("\n", 0, end) + 1, end - text.rfind("\n", 0, end)


def _check_size(items: list[Any]) -> None:
    if len(items) > MAX_RECORDS:
        raise SalesforceError("EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records into "
                              "this call")


def _type_of(record: Any, default: str | None = None) -> str:
    if not isinstance(record, dict):
        raise SalesforceError("JSON_PARSER_ERROR", "each record must be a JSON object")
    attributes = record.get("attributes")
    object_name = attributes.get("type") if isinstance(attributes, dict) else None
    if not object_name and default is None:
        raise SalesforceError("INVALID_TYPE", "Must specify a type in the attributes of each record")
    return object_name or default


def _checked_id(value: Any) -> str:
    if not value:
        raise SalesforceError("MISSING_ARGUMENT", "Id not specified in an update call", ["Id"])
    rid = normalize_id(value)
    if rid is None:
        raise SalesforceError("MALFORMED_ID", f"malformed id {value}", ["Id"])
    return rid


# ---------------------------------------------------------------- composite/batch


def batch(call: Call) -> Response:
    body = call.json_object()
    requests = body.get("batchRequests")
    if not isinstance(requests, list) or not requests:
        raise SalesforceError("JSON_PARSER_ERROR", "batchRequests: a non-empty array is required")
    if len(requests) > MAX_SUBREQUESTS:
        raise SalesforceError("INVALID_BATCH_REQUEST", f"A batch cannot contain more than {MAX_SUBREQUESTS} "
                              "requests")
    halt, halted, has_errors = bool(body.get("haltOnError")), False, False
    results = []
    for sub in requests:
        if halted:
            results.append({"statusCode": 412, "result": [{"errorCode": "BATCH_PROCESSING_HALTED",
                                                           "message": "Batch processing halted per request"}]})
            continue
        response = _sub_request(call, sub)
        results.append({"statusCode": response.status_code, "result": _decode(response)})
        if response.status_code >= 400:
            has_errors = True
            halted = halt
    return json_response({"hasErrors": has_errors, "results": results})


def _sub_request(call: Call, sub: Any) -> Response:
    try:
        sub_call = _sub_call(call, sub)
    except SalesforceError as exc:
        return json_response(exc.rest_body(), status=exc.status)
    return call.sandbox.dispatch(sub_call)


def _sub_call(call: Call, sub: Any) -> Call:
    if not isinstance(sub, dict) or not isinstance(sub.get("url"), str):
        raise SalesforceError("INVALID_BATCH_REQUEST", "each batch request needs a url and a method")
    parts = urlsplit(sub["url"])
    path = parts.path.removeprefix("/services/data/").lstrip("/")
    version, _, rest = path.partition("/")
    if not version.startswith("v") or rest.rstrip("/").startswith("composite/batch"):
        raise SalesforceError("INVALID_BATCH_REQUEST", f"unsupported batch request url: {sub['url']}")
    rest = "/" + rest.rstrip("/")
    rich = sub.get("richInput")
    return Call(sandbox=call.sandbox, method=str(sub.get("method", "GET")).upper(),
                path=unquote(rest), raw_path=rest, query=dict(parse_qsl(parts.query)), headers=call.headers,
                body=json.dumps(rich).encode() if rich is not None else b"", version=version[1:],
                user_id=call.user_id)


def _decode(response: Response) -> Any:
    if not response.body:
        return None
    try:
        return json.loads(response.body)
    except ValueError:
        return bytes(response.body).decode("utf-8", "replace")
