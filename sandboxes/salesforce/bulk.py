"""Bulk API 2.0: ingest jobs (CSV in, per-row results out) and query jobs (SOQL in, paged CSV out).

Jobs complete the moment they can: an ingest job processes its rows when it is closed (`UploadComplete`), a
query job runs its query when it is created. The responses to those two calls still report `UploadComplete`,
as Salesforce's do, and the next poll sees `JobComplete`, so clients built for a slow server (simple-salesforce
polls) work unchanged and finish fast. Rows go through the same store writes as REST (validation, rules,
triggers-equivalents), each in its own savepoint. Jobs live in memory only; the 100 newest of each kind are
kept.

Query results page with `maxRecords` and an opaque `locator` (base64 of the row offset, like Salesforce's),
answered with the `Sforce-NumberOfRecords` and `Sforce-Locator` headers (`null` on the last page).
"""
from __future__ import annotations

import base64
import csv
import io
import time
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable

from starlette.responses import Response

from .context import Call, json_response, no_content
from .errors import SalesforceError
from .model import Model
from .rest import run_soql
from .encoding import format_datetime, random_id
from .store import WriteResult

DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}
LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
INGEST_OPERATIONS = ("insert", "update", "upsert", "delete", "hardDelete")
QUERY_OPERATIONS = ("query", "queryAll")
RESULT_KINDS = {"successfulresults": "successful", "failedresults": "failed", "unprocessedrecords": "unprocessed"}
DEFAULT_MAX_RECORDS = 50_000
KEEP_JOBS = 100


@dataclass
class _Job:
    id: str
    operation: str
    object: str
    api_version: str
    created_by: str
    created: str
    line_ending: str
    column_delimiter: str
    state: str
    modstamp: str = ""
    error_message: str | None = None

    def base_info(self, job_type: str) -> dict[str, Any]:
        info = {"id": self.id, "operation": self.operation, "object": self.object, "createdById": self.created_by,
                "createdDate": self.created, "systemModstamp": self.modstamp or self.created, "state": self.state,
                "concurrencyMode": "Parallel", "contentType": "CSV", "apiVersion": float(self.api_version),
                "jobType": job_type, "lineEnding": self.line_ending, "columnDelimiter": self.column_delimiter}
        if self.error_message:
            info["errorMessage"] = self.error_message
        return info

    def csv_text(self, rows: Iterable[list[Any]]) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=DELIMITERS[self.column_delimiter],
                            lineterminator=LINE_ENDINGS[self.line_ending], quoting=csv.QUOTE_ALL)
        writer.writerows(rows)
        return buffer.getvalue()


@dataclass
class IngestJob(_Job):
    external_id_field: str | None = None
    assignment_rule_id: str | None = None
    header: list[str] | None = None
    rows: list[list[str]] = field(default_factory=list)
    successful: list[list[Any]] = field(default_factory=list)
    failed: list[list[Any]] = field(default_factory=list)
    processing_ms: int = 0

    def info(self, *, detail: bool) -> dict[str, Any]:
        info = self.base_info("V2Ingest")
        if self.external_id_field:
            info["externalIdFieldName"] = self.external_id_field
        if self.assignment_rule_id:
            info["assignmentRuleId"] = self.assignment_rule_id
        info["contentUrl"] = f"services/data/v{self.api_version}/jobs/ingest/{self.id}/batches"
        if detail:
            info.update(numberRecordsProcessed=len(self.successful) + len(self.failed),
                        numberRecordsFailed=len(self.failed), retries=0, totalProcessingTime=self.processing_ms,
                        apiActiveProcessingTime=self.processing_ms, apexProcessingTime=0)
        return info

    def results_csv(self, kind: str) -> str:
        header = self.header or []
        if kind == "successful":
            return self.csv_text([["sf__Id", "sf__Created", *header], *self.successful])
        if kind == "failed":
            return self.csv_text([["sf__Id", "sf__Error", *header], *self.failed])
        unprocessed = self.rows if self.state in ("Open", "Aborted") else []
        return self.csv_text([header, *unprocessed])


@dataclass
class QueryJob(_Job):
    header: list[str] = field(default_factory=list)
    text: str = ""  # every result row as CSV, line endings included
    ends: array = field(default_factory=lambda: array("q"))  # where each row ends in `text`

    def info(self, *, detail: bool) -> dict[str, Any]:
        info = self.base_info("V2Query")
        if detail:
            info.update(numberRecordsProcessed=len(self.ends), retries=0, totalProcessingTime=0,
                        isPkChunkingSupported=True)
        return info

    def render(self, rows: Iterable[list[Any]]) -> None:
        """Write `rows` as this job's results: one CSV writer for all of them (a writer per row cost more than
        the query), remembering where each row ends so that a page is a slice of the text."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=DELIMITERS[self.column_delimiter],
                            lineterminator=LINE_ENDINGS[self.line_ending], quoting=csv.QUOTE_ALL)
        end, ends = 0, self.ends
        for row in rows:
            end += writer.writerow(row)
            ends.append(end)
        self.text = buffer.getvalue()

    def page(self, offset: int, max_records: int) -> tuple[str, int]:
        """The CSV text of rows [offset, offset + max_records) and the offset after them."""
        end = min(offset + max_records, len(self.ends))
        if end <= offset:
            return "", offset
        return self.text[self.ends[offset - 1] if offset else 0:self.ends[end - 1]], end


class BulkJobs:
    def __init__(self) -> None:
        self.ingest: OrderedDict[str, IngestJob] = OrderedDict()
        self.query: OrderedDict[str, QueryJob] = OrderedDict()

    def add(self, jobs: OrderedDict[str, Any], job: Any) -> None:
        jobs[job.id] = job
        while len(jobs) > KEEP_JOBS:
            jobs.popitem(last=False)


# ---------------------------------------------------------------- ingest


def create_ingest(call: Call) -> Response:
    body = call.json_object()
    store = call.sandbox.store
    obj = _bulk_object(call, body.get("object"))
    operation = body.get("operation")
    if operation not in INGEST_OPERATIONS:
        raise SalesforceError("INVALIDJOB", f"InvalidJob : Invalid operation: {operation}")
    ext = body.get("externalIdFieldName")
    if operation == "upsert":
        if not ext:
            raise SalesforceError("INVALIDJOB", "InvalidJob : External ID was blank for upsert")
        ext = store.external_id_field(obj, ext).name
    job = IngestJob(id=random_id("750"), operation=operation, object=obj.name, api_version=call.version,
                    created_by=call.user_id, created=format_datetime(store.now()), state="Open",
                    **_formats(body), external_id_field=ext if operation == "upsert" else None,
                    assignment_rule_id=body.get("assignmentRuleId"))
    call.sandbox.jobs.add(call.sandbox.jobs.ingest, job)
    store.bump_daily("bulk_requests")
    return json_response(job.info(detail=False))


def upload_ingest(call: Call) -> Response:
    job = _ingest_job(call)
    if job.state != "Open":
        raise SalesforceError("INVALIDJOBSTATE", f"Job {job.id} is not open for data upload", status=409)
    text = call.body.decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=DELIMITERS[job.column_delimiter]))
    if rows:
        header, data = rows[0], [r for r in rows[1:] if r]
        if job.header is None:
            job.header = header
        elif [h.lower() for h in header] != [h.lower() for h in job.header]:
            raise SalesforceError("INVALIDBATCH", "InvalidBatch : every upload of a job must have the same header")
        job.rows.extend(data)
    call.sandbox.store.bump_daily("bulk_batches")
    return Response(status_code=201)


def patch_ingest(call: Call) -> Response:
    job = _ingest_job(call)
    state = call.json_object().get("state")
    if state == "UploadComplete" and job.state == "Open":
        job.state = "UploadComplete"
        answer = job.info(detail=False)
        _process(call, job)
        return json_response(answer)
    if state == "Aborted" and job.state in ("Open", "UploadComplete"):
        job.state = "Aborted"
        return json_response(job.info(detail=False))
    raise SalesforceError("INVALIDJOBSTATE", f"Cannot move job {job.id} from {job.state} to {state}")


def get_ingest(call: Call) -> Response:
    return json_response(_ingest_job(call).info(detail=True))


def list_ingest(call: Call) -> Response:
    return json_response({"done": True, "records": [j.info(detail=False) for j in call.sandbox.jobs.ingest.values()],
                          "nextRecordsUrl": None})


def ingest_results(call: Call) -> Response:
    kind = RESULT_KINDS.get(call.params["kind"].lower())
    if kind is None:
        raise SalesforceError("NOT_FOUND", "The requested resource does not exist", status=404)
    return Response(_ingest_job(call).results_csv(kind), media_type="text/csv")


def delete_ingest(call: Call) -> Response:
    job = _ingest_job(call)
    if job.state in ("Open", "InProgress"):
        raise SalesforceError("INVALIDJOBSTATE", f"Job {job.id} must be closed or aborted before it is deleted")
    del call.sandbox.jobs.ingest[job.id]
    return no_content()


def _process(call: Call, job: IngestJob) -> None:
    """Apply every uploaded row; the job ends JobComplete (with per-row failures) or Failed (bad header)."""
    started = time.monotonic()
    store, sandbox = call.sandbox.store, call.sandbox
    try:
        _check_header(call, job)
    except SalesforceError as exc:
        job.state, job.error_message = "Failed", exc.message
        return
    header = job.header or []
    with store.atomic():
        for row in job.rows:
            values = dict(zip(header, row))
            try:
                with store.atomic():
                    result = _apply(call, job, values)
            except SalesforceError as exc:
                job.failed.append([values.get("Id", ""), exc.bulk_error(), *row])
                continue
            job.successful.append([result.id, "true" if result.created else "false", *row])
            sandbox.stats.record_write(job.object, job.operation, result.id)  # Bulk ignores Sforce-Auto-Assign
    job.rows = []
    job.state, job.modstamp = "JobComplete", format_datetime(store.now())
    job.processing_ms = int((time.monotonic() - started) * 1000)


def _apply(call: Call, job: IngestJob, values: dict[str, str]) -> WriteResult:
    assign = job.assignment_rule_id is not None  # Bulk ignores Sforce-Auto-Assign; the job names a rule or not
    return apply_row(call.sandbox.store, job.operation, job.object, job.external_id_field, values,
                     user_id=call.user_id, auto_assign=assign, csv=True)


def apply_row(store: Any, operation: str, object_name: str, external_id_field: str | None,
              values: dict[str, Any], *, user_id: str, auto_assign: bool, csv: bool) -> WriteResult:
    """One Bulk API row (1.0 or 2.0) through the same store writes as REST."""
    record_id = next((v for k, v in values.items() if k.lower() == "id"), "")
    rest = {k: v for k, v in values.items() if k.lower() != "id"}
    if operation == "insert":
        return store.create(object_name, values, user_id=user_id, auto_assign=auto_assign, csv=csv)
    if operation == "update":
        return store.update(object_name, record_id, rest, user_id=user_id, auto_assign=auto_assign, csv=csv)
    if operation == "upsert":
        ext = external_id_field or "Id"
        key = next((v for k, v in values.items() if k.lower() == ext.lower()), "")
        others = {k: v for k, v in values.items() if k.lower() != ext.lower()}
        return store.upsert(object_name, ext, key, others, user_id=user_id, auto_assign=auto_assign, csv=csv)
    if operation == "delete":
        return WriteResult(store.delete(object_name, record_id, user_id=user_id), False)
    return WriteResult(store.hard_delete(object_name, record_id), False)


def _check_header(call: Call, job: IngestJob) -> None:
    if job.header is None:
        raise SalesforceError("INVALIDBATCH", "InvalidBatch : No data was uploaded to this job")
    obj = call.sandbox.store.object(job.object)
    if job.operation in ("delete", "hardDelete") and [h.lower() for h in job.header] != ["id"]:
        raise SalesforceError("INVALIDBATCH", "InvalidBatch : The 'delete/hardDelete' batch must contain only "
                              "an 'Id' field")
    for column in job.header:
        relationship = column.split(".", 1)[0] if "." in column else None
        if (obj.relationship(relationship) if relationship else obj.field(column)) is None:
            raise SalesforceError("INVALIDBATCH", f"InvalidBatch : Field name not found : {column}")


def _ingest_job(call: Call) -> IngestJob:
    job = call.sandbox.jobs.ingest.get(call.params["job_id"])
    if job is None:
        raise SalesforceError("NOT_FOUND", "The requested resource does not exist", status=404)
    return job


# ---------------------------------------------------------------- query


def create_query(call: Call) -> Response:
    body = call.json_object()
    operation = body.get("operation", "query")
    if operation not in QUERY_OPERATIONS:
        raise SalesforceError("INVALIDJOB", f"InvalidJob : Invalid operation: {operation}")
    result = run_soql(call, str(body.get("query") or ""), include_deleted=operation == "queryAll", records=False)
    if result.compound_fields:
        raise SalesforceError("API_ERROR", "Selecting compound data not supported in Bulk Query")
    if not result.columns:
        raise SalesforceError("API_ERROR", "Aggregate queries are not supported by Bulk API 2.0")
    store = call.sandbox.store
    job = QueryJob(id=random_id("750"), operation=operation, object=result.object_name, api_version=call.version,
                   created_by=call.user_id, created=format_datetime(store.now()), state="UploadComplete",
                   **_formats(body), header=result.columns)
    datetime_columns = [_column_type(call.sandbox.model, result.object_name, c) == "datetime"
                        for c in result.columns]
    job.render([_csv_value(v, is_datetime) for v, is_datetime in zip(row, datetime_columns)]
               for row in result.flat_rows())
    answer = job.info(detail=False)
    job.state = "JobComplete"
    call.sandbox.jobs.add(call.sandbox.jobs.query, job)
    store.bump_daily("bulk_query_jobs")
    return json_response(answer)


def get_query(call: Call) -> Response:
    return json_response(_query_job(call).info(detail=True))


def list_query(call: Call) -> Response:
    return json_response({"done": True, "records": [j.info(detail=False) for j in call.sandbox.jobs.query.values()],
                          "nextRecordsUrl": None})


def patch_query(call: Call) -> Response:
    job = _query_job(call)
    if call.json_object().get("state") != "Aborted" or job.state not in ("UploadComplete", "InProgress"):
        raise SalesforceError("INVALIDJOBSTATE", f"Job {job.id} is already {job.state}")
    job.state = "Aborted"
    return json_response(job.info(detail=False))


def delete_query(call: Call) -> Response:
    del call.sandbox.jobs.query[_query_job(call).id]
    return no_content()


def query_results(call: Call) -> Response:
    job = _query_job(call)
    if job.state != "JobComplete":
        raise SalesforceError("INVALIDJOBSTATE", f"Job {job.id} is {job.state}; results are not available")
    if call.version != job.api_version:
        raise SalesforceError("INVALIDJOBSTATE", f"Results of job {job.id} must be fetched with API version "
                              f"{job.api_version}", status=409)
    offset = _decode_locator(call.query.get("locator"))
    try:
        max_records = int(call.query.get("maxRecords") or DEFAULT_MAX_RECORDS)
    except ValueError:
        max_records = 0
    if max_records <= 0:
        raise SalesforceError("INVALIDPARAMETER", "maxRecords must be a positive integer")
    page, end = job.page(offset, max_records)
    locator = base64.b64encode(str(end).encode()).decode().rstrip("=") if end < len(job.ends) else "null"
    body = job.csv_text([job.header]) + page
    return Response(body, media_type="text/csv", headers={"Sforce-NumberOfRecords": str(end - offset),
                                                          "Sforce-Locator": locator})


def _decode_locator(locator: str | None) -> int:
    if not locator or locator == "null":
        return 0
    try:
        offset = int(base64.b64decode(locator + "=" * (-len(locator) % 4)).decode())
    except ValueError:
        offset = -1
    if offset < 0:
        raise SalesforceError("INVALIDLOCATOR", f"Invalid locator: {locator}")
    return offset


def _query_job(call: Call) -> QueryJob:
    job = call.sandbox.jobs.query.get(call.params["job_id"])
    if job is None:
        raise SalesforceError("NOT_FOUND", "The requested resource does not exist", status=404)
    return job


# ---------------------------------------------------------------- helpers


def _bulk_object(call: Call, name: Any) -> Any:
    obj = call.sandbox.model.object(str(name or ""))
    if obj is None:
        raise SalesforceError("INVALIDENTITY", f"InvalidEntity : Entity '{name}' is not supported by the Bulk API.")
    return obj


def _formats(body: dict[str, Any]) -> dict[str, str]:
    delimiter, ending = body.get("columnDelimiter", "COMMA"), body.get("lineEnding", "LF")
    if delimiter not in DELIMITERS or ending not in LINE_ENDINGS or body.get("contentType", "CSV") != "CSV":
        raise SalesforceError("INVALIDJOB", "InvalidJob : unsupported contentType, columnDelimiter or lineEnding")
    return {"column_delimiter": delimiter, "line_ending": ending}


def _column_type(model: Model, object_name: str, column: str) -> str | None:
    """The type of a flat result column such as 'Account.Owner.CreatedDate'."""
    obj = model.object(object_name)
    *path, last = column.split(".")
    for name in path:
        ref = obj.relationship(name) if obj else None
        obj = model.object(ref.reference_to[0]) if ref else None
    field = obj.field(last) if obj else None
    return field.type if field else None


def _csv_value(value: Any, is_datetime: bool) -> Any:
    """Bulk CSV encodings: empty for null, datetimes with a 'Z' (REST uses '+0000'), integral floats bare."""
    if value is None:
        return ""
    if is_datetime and isinstance(value, str) and value.endswith("+0000"):
        return value[:-5] + "Z"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return value
