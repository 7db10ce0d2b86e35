"""A thin Salesforce API client: simple-salesforce calls behind one retry policy, with API-usage metrics.

Why a wrapper at all: every call the connector makes (describe, query pages, get-deleted, sObject Collections,
Bulk API 2.0 steps) must survive the same transient failures in the same way, be counted, and report the org's
daily API usage. One `call()` does that for all of them:

- ``REQUEST_LIMIT_EXCEEDED`` (403), HTTP 5xx/429, ``UNABLE_TO_LOCK_ROW``, timeouts and connection errors are
  retried with exponential backoff and jitter, a bounded number of times (tenacity), then re-raised.
- ``INVALID_SESSION_ID`` (401) makes the client log in again (once per 401) and retry at once.
- Anything else (a malformed query, a missing object...) is raised immediately: retrying cannot fix it.

Retried writes and duplicates: a retried Collections *upsert*, *update* or *delete* is idempotent. A retried
*create* (POST) is not: if the server applied the first attempt and the answer was lost (timeout, 5xx), the
retry creates the records again. The writer therefore upserts on an external id whenever the command has one;
plain creates are at-least-once (see writer.py).

Bulk API 2.0 ingest is done step by step (create job + upload, close, poll, fetch results) so that each step can
be retried on its own: nothing is applied before the job is closed, so a failed create/upload is simply aborted
and started again, and closing, polling and fetching results are idempotent.
"""
from __future__ import annotations

import csv
import io
import logging
import time
from collections import Counter as Tally
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, TypeVar

import requests
from prometheus_client import Counter
from simple_salesforce import Salesforce
from simple_salesforce.bulk2 import JobState, Operation, ResultsType, _Bulk2Client
from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession
from tenacity import (RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential,
                      wait_random)

from connectors.salesforce.account import SalesforceAccount
from crmsync.config import Settings
from crmsync import api_budget
from crmsync.api_budget import API_CALLS
from crmsync.connectors import ApiUsage
from crmsync.retry import RetryPolicy
from connectors.salesforce import auth

log = logging.getLogger("crmsync.salesforce.client")
T = TypeVar("T")

COLLECTION_LIMIT = 200  # records per sObject Collections call (a Salesforce limit)
RETRIEVE_LIMIT = 2000  # ids per sObject Collections retrieve (POST) call (a Salesforce limit)
MAX_QUERY_BATCH = 2000

API_RETRIES = Counter("crmsync_crm_api_retries_total", "CRM API requests retried, by reason", ["account", "reason"])


class _SessionRenewed(Exception):
    """Raised inside a retry loop after a fresh login, so the call is retried at once with the new session."""


def error_code(exc: BaseException) -> str | None:
    """Salesforce's `errorCode` from a simple-salesforce exception (its body is a JSON array of errors)."""
    content = getattr(exc, "content", None)
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return content[0].get("errorCode") or content[0].get("statusCode")
    if isinstance(content, dict):
        return content.get("errorCode") or content.get("error")
    return None


def error_message(exc: BaseException) -> str:
    content = getattr(exc, "content", None)
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return str(content[0].get("message", content[0]))
    return str(content if content is not None else exc)


def retry_reason(exc: BaseException) -> str | None:
    """Why `exc` is worth retrying (a metrics label), or None when it is not."""
    if isinstance(exc, _SessionRenewed):
        return "session_expired"
    if isinstance(exc, requests.Timeout):
        return "timeout"
    if isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        return "connection"
    if isinstance(exc, SalesforceError):
        code = error_code(exc)
        if code == "REQUEST_LIMIT_EXCEEDED":
            return "request_limit"
        if code in ("UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE"):
            return code.lower()
        if exc.status == 429:
            return "throttled"
        if exc.status >= 500:
            return f"http_{exc.status}"
    return None


@dataclass
class Bulk2Result:
    """The per-record outcome of a Bulk API 2.0 ingest job (rows as Salesforce's result CSVs give them)."""

    job_id: str
    state: str
    successes: list[dict[str, str]] = field(default_factory=list)  # sf__Id, sf__Created, original columns
    failures: list[dict[str, str]] = field(default_factory=list)  # sf__Id, sf__Error, original columns
    unprocessed: list[dict[str, str]] = field(default_factory=list)
    error_message: str | None = None


class SalesforceClient:
    """One logged-in Salesforce account. Every API call goes through `call()`."""

    def __init__(self, account_name: str, account: SalesforceAccount, *, policy: RetryPolicy | None = None,
                 http: requests.Session | None = None) -> None:
        self.account_name = account_name
        self.account = account
        self.policy = policy or RetryPolicy()
        self.http = http or auth.http_session(account)
        # our API client id: Salesforce writes it into the changeOrigin of the change events our writes cause
        self.http.headers["Sforce-Call-Options"] = f"client={account.api_client}"
        self.session = auth.login(account, self.http)
        self.sf: Salesforce = auth.connect(account, self.session, self.http)
        self.calls: Tally[str] = Tally()  # per kind, every attempt (what the API limit counts)
        self.retries: Tally[str] = Tally()  # per reason
        self.logins = 1
        self._org_id: str | None = None
        self._daily_limit: int | None = None
        self._daily_remaining: int | None = None
        self._closers: list[Callable[[], None]] = []  # what else holds a connection of this login (Pub/Sub)

    # -- the one retry policy ------------------------------------------------------------------------------
    def call(self, kind: str, fn: Callable[[Salesforce], T]) -> T:
        """Run `fn(sf)` under the retry policy. `fn` takes the client so a re-login is picked up on retry."""
        retrying = Retrying(
            stop=stop_after_attempt(self.policy.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(lambda exc: retry_reason(exc) is not None),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        return retrying(self._attempt, kind, fn)

    def _attempt(self, kind: str, fn: Callable[[Salesforce], T]) -> T:
        self.calls[kind] += 1
        API_CALLS.labels(self.account_name, kind).inc()
        try:
            result = fn(self.sf)
        except SalesforceExpiredSession as exc:
            if error_code(exc) not in (None, "INVALID_SESSION_ID"):
                raise
            log.info("Salesforce session expired for %s; logging in again", self.account_name)
            self.relogin()
            raise _SessionRenewed() from exc
        self._record_usage()
        return result

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _SessionRenewed):
            return 0.0  # the new session is ready: no reason to wait
        backoff = wait_exponential(multiplier=self.policy.initial_wait, max=self.policy.max_wait)
        return backoff(state) + wait_random(0, self.policy.jitter)(state)

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = retry_reason(exc) if exc else "unknown"
        self.retries[reason or "unknown"] += 1
        API_RETRIES.labels(self.account_name, reason or "unknown").inc()
        log.info("retrying Salesforce call for %s (attempt %d, %s)", self.account_name, state.attempt_number,
                 reason)

    def relogin(self) -> None:
        """Log in again and rebind simple-salesforce to the new session (same HTTP session, same CA)."""
        self.session = auth.login(self.account, self.http)
        self.sf = auth.connect(self.account, self.session, self.http)
        self.logins += 1

    def _record_usage(self) -> None:
        api_budget.report(self.account_name, self._known_usage())  # never a call of its own (this runs in call())

    def api_usage(self) -> tuple[int, int] | None:
        """(used, limit) of the org's daily API requests, from the last `Sforce-Limit-Info` header seen."""
        usage = self.sf.api_usage.get("api-usage")
        return (usage.used, usage.total) if usage is not None else None

    def usage(self) -> ApiUsage:
        """crmsync.connectors.Client: calls this process made, and the org's daily budget as last reported (the
        `Sforce-Limit-Info` of the last answer; before any, `/limits` is read once)."""
        if self.api_usage() is None and self._daily_limit is None:
            try:
                self._read_limits()
            except (SalesforceError, requests.RequestException, KeyError) as exc:  # asked again next time
                log.warning("cannot read the daily API limit of %s: %s", self.account_name, exc)
        return self._known_usage()

    def _known_usage(self) -> ApiUsage:
        found = self.api_usage()
        if found is None:
            return ApiUsage(sum(self.calls.values()), self._daily_remaining, self._daily_limit, "day")
        return ApiUsage(sum(self.calls.values()), found[1] - found[0], found[1], "day")

    def _read_limits(self) -> None:
        """`/limits` → DailyApiRequests (Max, Remaining): the org's daily API budget."""
        daily = self.call("limits", lambda sf: sf.restful("limits"))["DailyApiRequests"]
        self._daily_limit, self._daily_remaining = int(daily["Max"]), int(daily["Remaining"])

    def org_id(self) -> str:
        """The org's id (the Pub/Sub API's `tenantid`), read once."""
        if self._org_id is None:
            rows = self.call("query", lambda sf: sf.query("SELECT Id FROM Organization LIMIT 1"))["records"]
            if not rows:
                raise RuntimeError(f"Salesforce answered no Organization row for {self.account_name}")
            self._org_id = rows[0]["Id"]
        return self._org_id

    def tooling_query(self, soql: str) -> list[dict[str, Any]]:
        """Every record of a Tooling API query (`tooling/query`), e.g. PlatformEventChannelMember."""
        page = self.call("tooling_query", lambda sf: sf.restful("tooling/query", params={"q": soql}))
        records = list(page["records"])
        while not page.get("done", True) and page.get("nextRecordsUrl"):
            url = page["nextRecordsUrl"]
            page = self.call("tooling_query", lambda sf: sf.query_more(url, identifier_is_url=True))
            records += page["records"]
        return [{k: v for k, v in r.items() if k != "attributes"} for r in records]

    def whoami(self) -> dict[str, str]:
        org = self.call("query", lambda sf: sf.query("SELECT Name FROM Organization LIMIT 1"))["records"]
        escaped = self.account.username.replace("\\", "\\\\").replace("'", "\\'")
        user = self.call("query", lambda sf: sf.query(f"SELECT Name FROM User WHERE Username = '{escaped}'"))["records"]
        return {"organization": org[0]["Name"] if org else "?",
                "user": f"{user[0]['Name']} ({self.account.username})" if user else self.account.username,
                "api_version": self.session.api_version}

    def when_closed(self, closer: Callable[[], None]) -> None:
        """Run `closer` when this client is closed (e.g. the Pub/Sub channel its change sources share)."""
        self._closers.append(closer)

    def close(self) -> None:
        for closer in self._closers:
            try:
                closer()
            except Exception:  # noqa: BLE001 - closing is best effort; the HTTP session is closed regardless
                log.debug("closing %s's connections", self.account_name, exc_info=True)
        self._closers.clear()
        self.http.close()

    # -- reads ---------------------------------------------------------------------------------------------
    def describe(self, obj: str) -> dict[str, Any]:
        return self.call("describe", lambda sf: sf.restful(f"sobjects/{obj}/describe"))

    def query_all_pages(self, soql: str, include_deleted: bool = False,
                        batch_size: int = MAX_QUERY_BATCH) -> Iterator[list[dict[str, Any]]]:
        """Yield the result of `soql` one page (≤ batch_size records) at a time, following nextRecordsUrl.

        Pages rather than records, so a caller can make each page durable (publish + flush + checkpoint)
        before it asks for the next one."""
        headers = {"Sforce-Query-Options": f"batchSize={max(200, min(batch_size, MAX_QUERY_BATCH))}"}
        page = self.call("query", lambda sf: sf.query(soql, include_deleted=include_deleted, headers=headers))
        while True:
            yield page["records"]
            if page.get("done", True) or not page.get("nextRecordsUrl"):
                return
            next_url = page["nextRecordsUrl"]
            page = self.call("query_more", lambda sf: sf.query_more(next_url, identifier_is_url=True,
                                                                    headers=headers))

    def get_deleted(self, obj: str, start: datetime, end: datetime) -> dict[str, Any]:
        """`sobjects/<obj>/deleted`: ids deleted in [start, end], including hard deletes (≤ 15 days back)."""
        params = {"start": _iso_seconds(start), "end": _iso_seconds(end)}
        return self.call("deleted", lambda sf: sf.restful(f"sobjects/{obj}/deleted/", params=params))

    # -- sObject Collections -------------------------------------------------------------------------------
    def collections_create(self, obj: str, records: list[dict[str, Any]], all_or_none: bool = False,
                           headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """POST composite/sobjects, 200 records per call; one result per record, in order."""
        return self._collections("collections_create", "POST", "composite/sobjects",
                                 [_typed(obj, r) for r in records], all_or_none, headers)

    def collections_update(self, obj: str, records: list[dict[str, Any]], all_or_none: bool = False,
                           headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """PATCH composite/sobjects; every record carries its `id`."""
        return self._collections("collections_update", "PATCH", "composite/sobjects",
                                 [_typed(obj, r) for r in records], all_or_none, headers)

    def collections_upsert(self, obj: str, ext_field: str, records: list[dict[str, Any]],
                           all_or_none: bool = False, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """PATCH composite/sobjects/<obj>/<ext_field>: insert or update by external id (results say `created`)."""
        return self._collections("collections_upsert", "PATCH", f"composite/sobjects/{obj}/{ext_field}",
                                 [_typed(obj, r) for r in records], all_or_none, headers)

    def collections_retrieve(self, obj: str, ids: list[str], fields: list[str]) -> list[dict[str, Any] | None]:
        """POST composite/sobjects/<obj> {"ids", "fields"}: up to 2,000 records per call, one entry per id in
        order (None for an id that is not a live record). Ten times the ids of a GET query, whose URL holds ~300."""
        results: list[dict[str, Any] | None] = []
        for start in range(0, len(ids), RETRIEVE_LIMIT):
            body = {"ids": ids[start:start + RETRIEVE_LIMIT], "fields": fields}
            answer = self.call("collections_retrieve",
                               lambda sf: sf.restful(f"composite/sobjects/{obj}", method="POST", json=body))
            results.extend(answer)
        return results

    def collections_delete(self, ids: list[str], all_or_none: bool = False) -> list[dict[str, Any]]:
        """DELETE composite/sobjects?ids=...: soft delete (to the recycle bin), 200 ids per call."""
        results: list[dict[str, Any]] = []
        for start in range(0, len(ids), COLLECTION_LIMIT):
            chunk = ids[start:start + COLLECTION_LIMIT]
            params = {"ids": ",".join(chunk), "allOrNone": str(all_or_none).lower()}
            answer = self.call("collections_delete",
                               lambda sf: sf.restful("composite/sobjects", params=params, method="DELETE"))
            results.extend(_check_results(answer, len(chunk)))
        return results

    def _collections(self, kind: str, method: str, path: str, records: list[dict[str, Any]], all_or_none: bool,
                     headers: dict[str, str] | None) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for start in range(0, len(records), COLLECTION_LIMIT):
            chunk = records[start:start + COLLECTION_LIMIT]
            body = {"allOrNone": all_or_none, "records": chunk}
            answer = self.call(kind, lambda sf: sf.restful(path, method=method, json=body, headers=headers or {}))
            results.extend(_check_results(answer, len(chunk)))
        return results

    def count(self, obj: str) -> int:
        """How many (live) records `obj` holds: one `SELECT COUNT()` query."""
        return int(self.call("query", lambda sf: sf.query(f"SELECT COUNT() FROM {obj}"))["totalSize"])

    # -- Bulk API 2.0 query --------------------------------------------------------------------------------
    def bulk2_query_pages(self, obj: str, soql: str, *, locator: str = "", job_id: str | None = None,
                          max_records: int = 50_000, poll_interval: float = 0.5,
                          timeout: float = 3600) -> Iterator[tuple[str, str, list[str], Iterator[list[str]]]]:
        """Run `soql` as a Bulk API 2.0 query job (or go on with `job_id` from `locator`) and yield its result
        pages as (job id, the locator of the next page or "", its header, its rows as lists of strings, parsed
        as they are iterated: a page's rows are never all held at once). Salesforce keeps a job's results for
        7 days, so a reader that stopped can continue from the locator it was given.
        https://developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/api_asynch/query_get_job_results.htm"""
        if job_id is None:
            job_id = self.call("bulk2", lambda sf: self._bulk(sf, obj).create_job(Operation.query, query=soql))["id"]
            deadline = time.monotonic() + timeout
            terminal = {JobState.job_complete.value, JobState.failed.value, JobState.aborted.value}
            while (info := self.call("bulk2", lambda sf: self._bulk(sf, obj).get_job(job_id, True)))["state"] \
                    not in terminal:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Bulk API 2.0 query job {job_id} still {info['state']} after {timeout}s")
                time.sleep(poll_interval)
            if info["state"] != JobState.job_complete.value:
                raise RuntimeError(f"Bulk API 2.0 query job {job_id} ended {info['state']}: "
                                   f"{info.get('errorMessage') or 'no message'}")
        while True:
            page = self.call("bulk2", lambda sf: self._bulk(sf, obj).get_query_results(job_id, locator, max_records))
            locator = page["locator"] or ""
            rows = csv.reader(io.StringIO(page["records"], newline=""))
            yield job_id, locator, next(rows, []), (row for row in rows if row)
            if not locator:
                return

    # -- Bulk API 2.0 ingest -------------------------------------------------------------------------------
    def bulk2_ingest(self, obj: str, operation: str, records: list[dict[str, Any]], ext_field: str | None = None,
                     poll_interval: float = 0.5, timeout: float = 3600) -> Bulk2Result:
        """Run one Bulk API 2.0 ingest job (insert, update, upsert, delete) and return per-record results."""
        if not records:
            return Bulk2Result(job_id="", state=JobState.job_complete.value)
        data = records_to_csv(records)
        op = Operation(operation)
        job_id = self._bulk_open(obj, op, data, ext_field)
        self._bulk_close(obj, job_id)
        info = self._bulk_wait(obj, job_id, poll_interval, timeout)
        result = Bulk2Result(job_id=job_id, state=info["state"], error_message=info.get("errorMessage"))
        if info["state"] != JobState.job_complete.value:
            return result
        result.successes = self._bulk_rows(obj, job_id, ResultsType.successful)
        result.failures = self._bulk_rows(obj, job_id, ResultsType.failed)
        result.unprocessed = self._bulk_rows(obj, job_id, ResultsType.unprocessed)
        return result

    def _bulk(self, sf: Salesforce, obj: str) -> _Bulk2Client:
        """simple-salesforce's Bulk 2.0 client for `obj`, bound to the current session."""
        return getattr(sf.bulk2, obj)._client

    def _bulk_open(self, obj: str, op: Operation, data: str, ext_field: str | None) -> str:
        """Create the job and upload its CSV as one retryable unit; a half-done attempt is aborted (nothing of
        an unclosed job is ever applied), so a retry cannot double-apply."""
        def open_and_upload(sf: Salesforce) -> str:
            bulk = self._bulk(sf, obj)
            job = bulk.create_job(op, external_id_field=ext_field)
            try:
                bulk.upload_job_data(job["id"], data)
            except BaseException:
                try:
                    bulk.abort_job(job["id"], False)
                except Exception:  # best effort: an open job expires on its own
                    log.debug("could not abort bulk job %s", job["id"])
                raise
            return job["id"]
        return self.call("bulk2", open_and_upload)

    def _bulk_close(self, obj: str, job_id: str) -> None:
        def close(sf: Salesforce) -> None:
            bulk = self._bulk(sf, obj)
            try:
                bulk.close_job(job_id)
            except SalesforceError:
                # A retried close after a lost answer: the job is already closed, which is what we wanted.
                if bulk.get_job(job_id, False)["state"] == JobState.open.value:
                    raise
        self.call("bulk2", close)

    def _bulk_wait(self, obj: str, job_id: str, poll_interval: float, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        terminal = {JobState.job_complete.value, JobState.failed.value, JobState.aborted.value}
        while True:
            info = self.call("bulk2", lambda sf: self._bulk(sf, obj).get_job(job_id, False))
            if info["state"] in terminal:
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(f"Bulk API 2.0 job {job_id} still {info['state']} after {timeout}s")
            time.sleep(poll_interval)

    def _bulk_rows(self, obj: str, job_id: str, kind: ResultsType) -> list[dict[str, str]]:
        text = self.call("bulk2", lambda sf: self._bulk(sf, obj).get_ingest_results(job_id, kind.value))
        return list(csv.DictReader(io.StringIO(text))) if text and text.strip() else []


def account_settings(settings: Settings, account_name: str) -> SalesforceAccount:
    """The named account from crmsync.yaml, with an error that lists the accounts there are."""
    account = settings.accounts.get(account_name)
    if account is None:
        raise ValueError(f"no account {account_name!r} in the configuration (accounts: "
                         f"{', '.join(settings.accounts) or 'none'})")
    if account.type != "salesforce":
        raise ValueError(f"account {account_name!r} is a {account.type} account, not salesforce")
    return account


def _typed(obj: str, record: dict[str, Any]) -> dict[str, Any]:
    return {"attributes": {"type": obj}, **{k: v for k, v in record.items() if k != "attributes"}}


def _check_results(answer: Any, expected: int) -> list[dict[str, Any]]:
    """Collections answer 200 with one result per record, in order; anything else is a protocol error."""
    if not isinstance(answer, list) or len(answer) != expected:
        raise RuntimeError(f"unexpected sObject Collections answer: expected {expected} results, got {answer!r:.300}")
    return answer


def _iso_seconds(moment: datetime) -> str:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def csv_value(value: Any) -> str:
    """Bulk CSV cell: empty leaves a field alone, `#N/A` sets it to null, booleans are true/false."""
    if value is None:
        return "#N/A"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def records_to_csv(records: list[dict[str, Any]]) -> str:
    """CSV for a Bulk 2.0 ingest job: the union of all records' columns, in first-seen order."""
    columns = list(dict.fromkeys(k for r in records for k in r if k != "attributes"))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([csv_value(record[c]) if c in record else "" for c in columns])
    return buffer.getvalue()
