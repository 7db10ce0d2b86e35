"""Bulk API 1.0: /services/async/<version>/job, batches and results, in XML, JSON and CSV.

Followed: Bulk API 1.0 Developer Guide (https://developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/
api_asynch/): "Create a Job" (asynch_api_jobs_create.htm), "Add a Batch" (asynch_api_batches_create.htm), "Get
Information for a Batch / All Batches" (asynch_api_batches_get_info*.htm), "Retrieve Batch Results"
(asynch_api_batches_get_results.htm), "Use Bulk Query" and "PK Chunking Header"
(asynch_api_code_curl_walkthrough_pk_chunking.htm, async_api_headers_enable_pk_chunking.htm), "Job Info" /
"Batch Info" field lists, and "Errors" (`<error><exceptionCode>…` / `{"exceptionCode": …}`).

Rules kept:
* Authentication is the `X-SFDC-Session` header (a session id from any login); a bad one answers 400
  `InvalidSessionId`. Requests count against the daily API limit like REST calls.
* A job's `contentType` (CSV, XML, JSON; the `*_CSV`/`ZIP_*` variants are refused) sets the batch format and the
  default response format; a request whose Content-Type is JSON gets JSON, XML gets XML. Responses carry
  exactly `application/xml`, `application/json` or `text/csv` (clients compare the header verbatim).
* Creating a job or a batch answers 201. A batch is processed at once (rows through the same store writes as
  REST and Bulk 2.0, each in its own savepoint, change events with changeOrigin `com/salesforce/api/bulkapi/…`);
  the add-batch answer still says `Queued` and the next GET says `Completed`, so polling clients finish at once.
* Query jobs run their SOQL when the batch is added; results are one result set per batch (CSV, JSON records
  with `attributes`, or XML `<queryResult>`). With `Sforce-Enable-PKChunking: true | chunkSize=N` (default
  100,000, at most 250,000) the batch holding the query becomes `NotProcessed` and one more batch per Id range
  of N records does the work, as Salesforce does.
* Jobs live in memory (the 100 newest); closing (`Closed`) or aborting (`Aborted`) works as documented.
"""
from __future__ import annotations

import csv
import io
import json
import re
import time
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass, field
from html import escape
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .bulk import KEEP_JOBS, apply_row
from .context import Sandbox
from .encoding import format_datetime, random_id
from .errors import SalesforceError
from .rest import run_soql
from .soql import tokenize

NS = "http://www.force.com/2009/06/asyncapi/dataload"
CONTENT_TYPES = ("CSV", "XML", "JSON")
OPERATIONS = ("insert", "update", "upsert", "delete", "hardDelete", "query", "queryAll")
PK_CHUNK_DEFAULT, PK_CHUNK_MAX = 100_000, 250_000
MEDIA = {"XML": "application/xml", "JSON": "application/json", "CSV": "text/csv"}


class BulkError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass
class Batch:
    id: str
    job_id: str
    created: str
    request: bytes
    state: str = "Queued"
    state_message: str | None = None
    processed: int = 0
    failed: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)  # ingest: {id, success, created, errors}
    query_rows: list[dict[str, Any]] | None = None  # query: REST-shaped records
    query_columns: list[str] = field(default_factory=list)
    result_id: str = ""
    millis: int = 0


@dataclass
class Job:
    id: str
    operation: str
    object: str
    content_type: str
    created_by: str
    created: str
    api_version: str
    external_id_field: str | None = None
    concurrency: str = "Parallel"
    state: str = "Open"
    pk_chunk_size: int | None = None
    modstamp: str = ""
    batches: OrderedDict[str, Batch] = field(default_factory=OrderedDict)

    def info(self) -> dict[str, Any]:
        """jobInfo, fields in the documented order."""
        batches = list(self.batches.values())
        count = {state: sum(b.state == state for b in batches) for state in ("Queued", "InProgress", "Completed",
                                                                            "Failed", "NotProcessed")}
        info: dict[str, Any] = {"id": self.id, "operation": self.operation, "object": self.object,
                                "createdById": self.created_by, "createdDate": self.created,
                                "systemModstamp": self.modstamp or self.created, "state": self.state}
        if self.external_id_field:
            info["externalIdFieldName"] = self.external_id_field
        info.update(concurrencyMode=self.concurrency, contentType=self.content_type,
                    numberBatchesQueued=count["Queued"], numberBatchesInProgress=count["InProgress"],
                    numberBatchesCompleted=count["Completed"], numberBatchesFailed=count["Failed"],
                    numberBatchesTotal=len(batches), numberRecordsProcessed=sum(b.processed for b in batches),
                    numberRetries=0, apiVersion=float(self.api_version),
                    numberRecordsFailed=sum(b.failed for b in batches),
                    totalProcessingTime=sum(b.millis for b in batches),
                    apiActiveProcessingTime=sum(b.millis for b in batches), apexProcessingTime=0)
        return info


def batch_info(batch: Batch) -> dict[str, Any]:
    info: dict[str, Any] = {"id": batch.id, "jobId": batch.job_id, "state": batch.state}
    if batch.state_message:
        info["stateMessage"] = batch.state_message
    info.update(createdDate=batch.created, systemModstamp=batch.created, numberRecordsProcessed=batch.processed,
                numberRecordsFailed=batch.failed, totalProcessingTime=batch.millis,
                apiActiveProcessingTime=batch.millis, apexProcessingTime=0)
    return info


class Bulk1Jobs:
    def __init__(self) -> None:
        self.jobs: OrderedDict[str, Job] = OrderedDict()

    def add(self, job: Job) -> None:
        self.jobs[job.id] = job
        while len(self.jobs) > KEEP_JOBS:
            self.jobs.popitem(last=False)

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise BulkError("InvalidJob", f"Unable to find job with id {job_id}")
        return job


# ---------------------------------------------------------------- HTTP layer


def routes() -> list[Route]:
    base = "/services/async/{version}/job"
    return [Route(base, endpoint, methods=["POST"]),
            Route(base + "/{job_id}", endpoint, methods=["GET", "POST"]),
            Route(base + "/{job_id}/batch", endpoint, methods=["GET", "POST"]),
            Route(base + "/{job_id}/batch/{batch_id}", endpoint, methods=["GET"]),
            Route(base + "/{job_id}/batch/{batch_id}/request", endpoint, methods=["GET"]),
            Route(base + "/{job_id}/batch/{batch_id}/result", endpoint, methods=["GET"]),
            Route(base + "/{job_id}/batch/{batch_id}/result/{result_id}", endpoint, methods=["GET"])]


@dataclass
class _Request:
    method: str
    path: str  # the part after /job, e.g. '', '/750…/batch'
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes
    version: str


async def endpoint(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    version = request.path_params["version"]
    raw = _Request(request.method, request.url.path.split("/job", 1)[1], dict(request.path_params),
                   {k.lower(): v for k, v in request.headers.items()}, await request.body(), version)
    return await sandbox.worker.run(_serve, sandbox, raw)


def _serve(sandbox: Sandbox, raw: _Request) -> Response:
    from .app import VERSIONS, change_origin  # the app module imports this one

    wants = _format_of(raw.headers.get("content-type", ""))
    try:
        if raw.version not in VERSIONS:
            raise BulkError("InvalidVersion", f"Invalid API version: {raw.version}", status=404)
        try:
            user_id = sandbox.auth.check_access(raw.headers.get("x-sfdc-session", ""))
        except SalesforceError:
            raise BulkError("InvalidSessionId", "Invalid session id") from None
        if sandbox.store.daily("api") >= sandbox.settings.daily_api_max:
            raise BulkError("ExceededQuota", "TotalRequests Limit exceeded.", status=403)
        sandbox.store.bump_daily("api")
        with sandbox.changes.transaction(change_origin("bulkapi", raw.version, raw.headers), user_id):
            return _route(sandbox, raw, user_id, wants)
    except BulkError as error:
        return _render({"exceptionCode": error.code, "exceptionMessage": error.message}, "error",
                       wants or "XML", status=error.status)


def _route(sandbox: Sandbox, raw: _Request, user_id: str, wants: str | None) -> Response:
    jobs, p = sandbox.bulk1, raw.params
    if "job_id" not in p:
        job = _create_job(sandbox, raw, user_id, wants)
        return _render(job.info(), "jobInfo", wants or job.content_type, status=201)
    job = jobs.get(p["job_id"])
    fmt = wants or job.content_type
    if raw.path.endswith("/batch") and raw.method == "POST":
        batch = _add_batch(sandbox, job, raw, user_id)
        return _render(batch_info(batch), "batchInfo", fmt, status=201, answer_state="Queued")
    if raw.path.endswith("/batch"):
        return _render_list([batch_info(b) for b in job.batches.values()], fmt)
    if "batch_id" not in p:
        if raw.method == "POST":
            _change_state(job, raw, wants or job.content_type)
        return _render(job.info(), "jobInfo", fmt)
    batch = job.batches.get(p["batch_id"])
    if batch is None:
        raise BulkError("InvalidBatch", f"Unable to find batch for id: {p['batch_id']}")
    if raw.path.endswith("/request"):
        return _raw(batch.request, job.content_type)
    if raw.path.endswith("/result"):
        return _results(job, batch, fmt)
    if "result_id" in p:
        return _query_result(job, batch, p["result_id"])
    return _render(batch_info(batch), "batchInfo", fmt)


def _create_job(sandbox: Sandbox, raw: _Request, user_id: str, wants: str | None) -> Job:
    spec = _parse_spec(raw.body, wants or "XML")
    operation, content_type = str(spec.get("operation") or ""), str(spec.get("contentType") or "CSV")
    if operation not in OPERATIONS:
        raise BulkError("InvalidJob", f"Invalid operation: {operation}")
    if content_type not in CONTENT_TYPES:
        raise BulkError("InvalidJob", f"Unsupported content type {content_type}: the crmsync sandbox accepts "
                        "CSV, XML and JSON")
    obj = sandbox.model.object(str(spec.get("object") or ""))
    if obj is None:
        raise BulkError("InvalidJob", f"Unable to find object: {spec.get('object')}")
    external = spec.get("externalIdFieldName")
    if operation == "upsert":
        if not external:
            raise BulkError("InvalidJob", "External ID was blank for upsert")
        try:
            external = sandbox.store.external_id_field(obj, str(external)).name
        except SalesforceError as exc:
            raise BulkError("InvalidJob", exc.message) from None
    concurrency = {"0": "Parallel", "1": "Serial"}.get(str(spec.get("concurrencyMode")),
                                                       str(spec.get("concurrencyMode") or "Parallel"))
    job = Job(id=random_id("750"), operation=operation, object=obj.name, content_type=content_type,
              created_by=user_id, created=format_datetime(sandbox.store.now()), api_version=raw.version,
              external_id_field=external if operation == "upsert" else None, concurrency=concurrency,
              pk_chunk_size=_pk_chunking(raw.headers.get("sforce-enable-pkchunking")))
    sandbox.bulk1.add(job)
    sandbox.store.bump_daily("bulk_requests")
    return job


def _change_state(job: Job, raw: _Request, fmt: str) -> None:
    state = _parse_spec(raw.body, fmt).get("state")
    if state not in ("Closed", "Aborted"):
        raise BulkError("InvalidJobState", f"Invalid state: {state}")
    if job.state != "Open":
        raise BulkError("InvalidJobState", f"Job {job.id} is {job.state}: it cannot become {state}")
    job.state = str(state)


def _add_batch(sandbox: Sandbox, job: Job, raw: _Request, user_id: str) -> Batch:
    if job.state != "Open":
        raise BulkError("InvalidJobState", f"Job {job.id} is {job.state}: batches cannot be added")
    batch = Batch(id=random_id("751"), job_id=job.id, created=format_datetime(sandbox.store.now()),
                  request=raw.body)
    job.batches[batch.id] = batch
    sandbox.store.bump_daily("bulk_batches")
    started = time.monotonic()
    if job.operation in ("query", "queryAll"):
        _run_query(sandbox, job, batch, raw.body.decode("utf-8-sig").strip())
    else:
        _run_ingest(sandbox, job, batch, user_id)
    batch.millis = int((time.monotonic() - started) * 1000)
    job.modstamp = format_datetime(sandbox.store.now())
    return batch


# ---------------------------------------------------------------- processing


def _run_ingest(sandbox: Sandbox, job: Job, batch: Batch, user_id: str) -> None:
    try:
        rows, typed = _records(batch.request, job.content_type)
    except ValueError as exc:
        batch.state, batch.state_message = "Failed", f"InvalidBatch : {exc}"
        return
    store = sandbox.store
    with store.atomic():
        for values in rows:
            try:
                with store.atomic():
                    result = apply_row(store, job.operation, job.object, job.external_id_field, values,
                                       user_id=user_id, auto_assign=False, csv=not typed)
            except SalesforceError as exc:
                batch.results.append({"success": False, "created": False, "id": None,
                                      "errors": [{"fields": exc.fields, "message": exc.message,
                                                  "statusCode": exc.code}]})
                batch.failed += 1
                continue
            batch.results.append({"success": True, "created": result.created, "id": result.id, "errors": []})
            sandbox.stats.record_write(job.object, job.operation, result.id)
    batch.processed = len(rows)
    batch.state = "Completed"


def _run_query(sandbox: Sandbox, job: Job, batch: Batch, soql: str) -> None:
    include_deleted = job.operation == "queryAll"
    if job.pk_chunk_size:
        batch.state, batch.state_message = "NotProcessed", None
        for low, high in _id_ranges(sandbox, job, include_deleted):
            chunk = Batch(id=random_id("751"), job_id=job.id, created=batch.created,
                          request=_with_id_range(soql, low, high).encode())
            job.batches[chunk.id] = chunk
            _query_into(sandbox, job, chunk, chunk.request.decode(), include_deleted)
        return
    _query_into(sandbox, job, batch, soql, include_deleted)


def _query_into(sandbox: Sandbox, job: Job, batch: Batch, soql: str, include_deleted: bool) -> None:
    from .context import Call

    call = Call(sandbox=sandbox, method="GET", path="/query", raw_path="/query", query={}, headers={}, body=b"",
                version=job.api_version, user_id=job.created_by)
    try:
        result = run_soql(call, soql, include_deleted=include_deleted)
    except SalesforceError as exc:
        batch.state, batch.state_message = "Failed", f"{exc.code} : {exc.message}"
        return
    if result.object_name != job.object:
        batch.state, batch.state_message = "Failed", f"InvalidBatch : the query's object {result.object_name} " \
                                                     f"is not the job's object {job.object}"
        return
    if result.compound_fields and job.content_type == "CSV":
        batch.state, batch.state_message = "Failed", "InvalidBatch : Selecting compound data not supported in " \
                                                     "Bulk Query"
        return
    batch.query_rows, batch.query_columns = result.records, result.columns
    batch.processed, batch.result_id, batch.state = len(result.records), random_id("752"), "Completed"


def _id_ranges(sandbox: Sandbox, job: Job, include_deleted: bool) -> list[tuple[str, str | None]]:
    """Boundaries of consecutive Id ranges holding `pk_chunk_size` records each (the last is open-ended)."""
    where = "" if include_deleted else " WHERE IsDeleted = 0"
    ids = [r[0] for r in sandbox.store.conn.execute(f'SELECT Id FROM "{job.object}"{where} ORDER BY Id')]
    size = job.pk_chunk_size or PK_CHUNK_DEFAULT
    starts = ids[::size] or ["000000000000000AAA"]
    return [(low, starts[i + 1] if i + 1 < len(starts) else None) for i, low in enumerate(starts)]


def _with_id_range(soql: str, low: str, high: str | None) -> str:
    """The query with `Id >= low AND Id < high` added to its WHERE clause (before ORDER BY / LIMIT)."""
    tokens = tokenize(soql)
    words = [(t.text.upper(), t.pos) for t in tokens if t.kind == "IDENT"]
    where = next((pos for word, pos in words if word == "WHERE"), None)
    tail = next((pos for word, pos in words if word in ("ORDER", "LIMIT", "OFFSET") and pos > (where or 0)),
                len(soql))
    bound = f"Id >= '{low}'" + (f" AND Id < '{high}'" if high else "")
    if where is None:
        return f"{soql[:tail].rstrip()} WHERE {bound} {soql[tail:]}".strip()
    return f"{soql[:where]}WHERE {bound} AND ({soql[where + 5:tail].strip()}) {soql[tail:]}".strip()


def _pk_chunking(header: str | None) -> int | None:
    if not header or header.strip().lower() == "false":
        return None
    match = re.search(r"chunkSize\s*=\s*(\d+)", header, re.IGNORECASE)
    size = int(match.group(1)) if match else PK_CHUNK_DEFAULT
    if not 1 <= size <= PK_CHUNK_MAX:
        raise BulkError("InvalidJob", f"chunkSize must be between 1 and {PK_CHUNK_MAX}")
    return size


# ---------------------------------------------------------------- formats


def _format_of(content_type: str) -> str | None:
    lowered = content_type.lower()
    return "JSON" if "json" in lowered else "XML" if "xml" in lowered else None


def _parse_spec(body: bytes, fmt: str) -> dict[str, Any]:
    """A jobInfo request body (XML or JSON) as a dict."""
    try:
        if fmt == "JSON":
            data = json.loads(body or b"{}")
            if not isinstance(data, dict):
                raise ValueError("a JSON object is required")
            return data
        root = ET.fromstring(body)
        return {_local(child.tag): (child.text or "").strip() for child in root}
    except (ValueError, ET.ParseError) as exc:
        raise BulkError("InvalidJob", f"Unable to parse the job request: {exc}") from None


def _records(body: bytes, content_type: str) -> tuple[list[dict[str, Any]], bool]:
    """Batch records and whether their values are typed (JSON) rather than text (CSV, XML)."""
    if content_type == "JSON":
        data = json.loads(body or b"[]")
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError("a JSON batch is an array of records")
        return data, True
    if content_type == "XML":
        root = ET.fromstring(body)
        return [{_local(f.tag): _xml_value(f) for f in record} for record in root], False
    text = body.decode("utf-8-sig")
    rows = [r for r in csv.reader(io.StringIO(text, newline="")) if r]
    if not rows:
        raise ValueError("the CSV batch is empty")
    return [dict(zip(rows[0], row)) for row in rows[1:]], False


def _xml_value(element: ET.Element) -> Any:
    nil = element.get("{http://www.w3.org/2001/XMLSchema-instance}nil") == "true"
    return "#N/A" if nil else (element.text or "")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _render(data: dict[str, Any], root: str, fmt: str, status: int = 200, answer_state: str | None = None) \
        -> Response:
    if answer_state:
        data = {**data, "state": answer_state}
    if fmt == "JSON":
        return _raw(json.dumps(data).encode(), "JSON", status)
    return _raw(_xml(root, data).encode(), "XML", status)


def _render_list(infos: list[dict[str, Any]], fmt: str) -> Response:
    if fmt == "JSON":
        return _raw(json.dumps({"batchInfo": infos}).encode(), "JSON")
    inner = "".join(_xml_element("batchInfo", info) for info in infos)
    return _raw(f'<?xml version="1.0" encoding="UTF-8"?><batchInfoList xmlns="{NS}">{inner}</batchInfoList>'
                .encode(), "XML")


def _results(job: Job, batch: Batch, fmt: str) -> Response:
    if batch.state not in ("Completed", "Failed", "NotProcessed"):
        raise BulkError("InvalidBatch", "Batch not completed")
    if job.operation in ("query", "queryAll"):
        if batch.query_rows is None:
            raise BulkError("InvalidBatch", f"Batch {batch.id} has no results: {batch.state}")
        if fmt == "JSON":
            return _raw(json.dumps([batch.result_id]).encode(), "JSON")
        return _raw(f'<?xml version="1.0" encoding="UTF-8"?><result-list xmlns="{NS}"><result>{batch.result_id}'
                    f'</result></result-list>'.encode(), "XML")
    if job.content_type == "JSON":
        return _raw(json.dumps(batch.results).encode(), "JSON")
    if job.content_type == "XML":
        inner = "".join(_xml_element("result", r) for r in batch.results)
        return _raw(f'<?xml version="1.0" encoding="UTF-8"?><results xmlns="{NS}">{inner}</results>'.encode(), "XML")
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(["Id", "Success", "Created", "Error"])
    for r in batch.results:
        error = "; ".join(f"{e['statusCode']}:{e['message']}" for e in r["errors"])
        writer.writerow([r["id"] or "", str(r["success"]).lower(), str(r["created"]).lower(), error])
    return _raw(buffer.getvalue().encode(), "CSV")


def _query_result(job: Job, batch: Batch, result_id: str) -> Response:
    if batch.query_rows is None or result_id != batch.result_id:
        raise BulkError("InvalidBatch", f"Unable to find result for id: {result_id}")
    if job.content_type == "JSON":
        return _raw(json.dumps(batch.query_rows).encode(), "JSON")
    if job.content_type == "XML":
        records = "".join(_xml_record(job.object, r) for r in batch.query_rows)
        return _raw(f'<?xml version="1.0" encoding="UTF-8"?><queryResult xmlns="{NS}" '
                    f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">{records}</queryResult>'.encode(), "XML")
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(batch.query_columns)
    for record in batch.query_rows:
        writer.writerow([_csv_cell(_path(record, c)) for c in batch.query_columns])
    return _raw(buffer.getvalue().encode(), "CSV")


def _path(record: dict[str, Any], column: str) -> Any:
    value: Any = record
    for key in column.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _xml_record(object_name: str, record: dict[str, Any]) -> str:
    fields = "".join(_xml_field(k, v) for k, v in record.items() if k != "attributes")
    return f'<records xsi:type="sObject"><type>{object_name}</type>{fields}</records>'


def _xml_field(name: str, value: Any) -> str:
    if value is None:
        return f'<{name} xsi:nil="true"/>'
    if isinstance(value, dict):
        inner = "".join(_xml_field(k, v) for k, v in value.items() if k != "attributes")
        return f'<{name} xsi:type="sObject">{inner}</{name}>'
    return f"<{name}>{escape(_csv_cell(value))}</{name}>"


def _xml(root: str, data: dict[str, Any]) -> str:
    return f'<?xml version="1.0" encoding="UTF-8"?>{_xml_element(root, data, NS)}'


def _xml_element(name: str, data: dict[str, Any], namespace: str | None = None) -> str:
    parts = []
    for key, value in data.items():
        if isinstance(value, list):
            for item in value:
                parts.append(_xml_element(key, item) if isinstance(item, dict) else _xml_scalar(key, item))
        else:
            parts.append(_xml_scalar(key, value))
    xmlns = f' xmlns="{namespace}"' if namespace else ""
    return f"<{name}{xmlns}>{''.join(parts)}</{name}>"


def _xml_scalar(name: str, value: Any) -> str:
    if value is None:
        return f'<{name} xsi:nil="true" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/>'
    return f"<{name}>{escape(_csv_cell(value))}</{name}>"


def _raw(body: bytes, fmt: str, status: int = 200) -> Response:
    return Response(body, status_code=status, headers={"Content-Type": MEDIA[fmt]})


