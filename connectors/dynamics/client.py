"""A small direct client for the Dataverse Web API (v9.x), in the spirit of simple-salesforce; the Dynamics
connector builds on it.

One request path (`request`) does everything around a call: bearer token, retry with back-off for 429 (honouring
`Retry-After`, learn.microsoft.com/power-apps/developer/data-platform/api-limits), 5xx and timeouts, one new
token after a 401, counting requests and reading the remaining service-protection budget from the
`x-ms-ratelimit-*` headers. Errors carry Dataverse's `error.code` and `error.message`, scrubbed of tokens and
secrets. Helpers cover what a sync needs:

  query / query_pages      `$select $filter $orderby $expand`, `Prefer: odata.maxpagesize`, following nextLinks
  change_pages / changes   change tracking: page by page (rows, deleted ids, next or delta link), or all at once
  create / update / upsert / delete   by id or alternate key, with If-Match / If-None-Match
  create_multiple / update_multiple / upsert_multiple   the bulk actions
  batch                    `$batch` with change sets; one outcome per operation, in order
  entity / option_sets     EntityDefinitions metadata with choices

Every request first waits for the pacer (pacing.py), so steady work stays under the service-protection limits;
`usage()` reports the calls made and the budget the server says is left.

Invariants: https only (the environment URL is validated by DynamicsAccount), TLS verification with the CA file
passed explicitly, absolute nextLinks/deltaLinks are followed only when they point at the same environment, JSON
bodies carry Decimal values digit for digit (money keeps its precision).
"""
from __future__ import annotations

import json
import logging
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import quote, urlsplit

import httpx

from crmsync.api_budget import API_CALLS
from crmsync.connectors import ApiUsage

from .auth import DynamicsAccount, TokenProvider
from .pacing import Pacer

log = logging.getLogger("crmsync.dynamics.client")
RETRY_STATUSES = {429, 500, 502, 503, 504}
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_URL_SAFE = ":/?&=$(),'@%"  # what stays unescaped in a batch part's request line
_STATUS_LINE = re.compile(r"^HTTP/1\.[01] (\d{3})")

Key = str | Mapping[str, Any]  # a GUID, or alternate-key column values


class DataverseApiError(Exception):
    """A Web API call failed; `code` is Dataverse's error code (e.g. 0x80040217), `status` the HTTP status."""

    def __init__(self, status: int, code: str, message: str, method: str, path: str,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{method} {path} -> {status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


@dataclass
class Budget:
    """The service-protection budget the last response reported (None until a response said)."""
    remaining_requests: int | None = None
    remaining_seconds: float | None = None


@dataclass(frozen=True)
class ChangePage:
    """One page of a change-tracking read: rows and deleted ids, then where to go on (one of the two links)."""
    rows: list[dict[str, Any]]  # new or updated rows
    deleted_ids: list[str]
    next_link: str | None  # more pages of this read
    delta_link: str | None  # the read is complete: store this, pass it to the next read
    server_time: datetime | None = None  # the response's Date header


@dataclass(frozen=True)
class Changes:
    rows: list[dict[str, Any]]  # new or updated rows
    deleted_ids: list[str]
    delta_link: str  # store it; pass it to the next changes() call


@dataclass
class Operation:
    """One request inside a `$batch`: method, URL relative to the service root (or `$n`), optional body."""
    method: str
    url: str
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_id: str | None = None


@dataclass
class ChangeSet:
    """Operations that succeed or fail together."""
    operations: list[Operation]


@dataclass(frozen=True)
class Outcome:
    """The answer to one batch operation."""
    status: int
    headers: dict[str, str]
    body: Any
    content_id: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def entity_id(self) -> str | None:
        location = self.headers.get("odata-entityid")
        match = re.search(r"\(([0-9a-fA-F-]{36})\)$", location or "")
        return match.group(1) if match else None

    @property
    def error(self) -> dict[str, Any] | None:
        return self.body.get("error") if isinstance(self.body, dict) else None


class DataverseClient:
    def __init__(self, account: DynamicsAccount, *, account_name: str = "", tokens: TokenProvider | None = None,
                 http: httpx.Client | None = None, max_attempts: int = 6, max_retry_after: float = 300.0,
                 backoff_seconds: float = 0.5, pacer: Pacer | None = None) -> None:
        self.account = account
        self.account_name = account_name
        self.http = http or httpx.Client(verify=account.verify(), timeout=account.timeout_seconds)
        self.tokens = tokens or TokenProvider(account, self.http)
        self.max_attempts, self.max_retry_after, self.backoff = max_attempts, max_retry_after, backoff_seconds
        self.pacer = pacer or Pacer(account.service_protection)
        self.service_root = f"{account.url}/api/data/v{account.api_version}"
        self.requests_sent = 0
        self.retries = 0
        self.budget = Budget()

    def usage(self) -> ApiUsage:
        """Calls this client made and the service-protection budget the last response reported (per user)."""
        limits = self.account.service_protection
        return ApiUsage(calls=self.requests_sent, remaining=self.budget.remaining_requests,
                        limit=limits.requests_per_window, window=f"{limits.window_seconds / 60:g} minutes")

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "DataverseClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ the one request path

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json_body: Any = None,
                headers: Mapping[str, str] | None = None, content: bytes | None = None) -> httpx.Response:
        """Send one Web API request with retries; returns the response (2xx/304) or raises DataverseApiError."""
        url = self._url(path)
        reauthenticated = False
        for attempt in range(1, self.max_attempts + 1):
            self.pacer.acquire()
            started = time.monotonic()
            try:
                response = self._send(method, url, params, json_body, headers, content)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                self.pacer.record(time.monotonic() - started, None, None)
                if attempt == self.max_attempts:
                    raise DataverseApiError(0, type(exc).__name__, "the Web API did not answer", method,
                                            _display(url)) from None
                self._pause(self._backoff(attempt), f"{type(exc).__name__}", method, url)
                continue
            self._note_budget(response)
            self.pacer.record(time.monotonic() - started, self.budget.remaining_requests, self.budget.remaining_seconds)
            if response.status_code == 401 and not reauthenticated:
                reauthenticated = True
                self.tokens.invalidate()
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.max_attempts:
                wait = _retry_after(response)
                self._pause(min(wait, self.max_retry_after) if wait is not None else self._backoff(attempt),
                            str(response.status_code), method, url)
                continue
            if response.status_code >= 400:
                raise self._error(response, method, url)
            return response
        raise AssertionError("unreachable")  # the loop either returns or raises

    def _send(self, method: str, url: str, params: Mapping[str, Any] | None, json_body: Any,
              headers: Mapping[str, str] | None, content: bytes | None) -> httpx.Response:
        sent = {"Authorization": f"Bearer {self.tokens.token()}", "Accept": "application/json",
                "OData-MaxVersion": "4.0", "OData-Version": "4.0", **(headers or {})}
        if json_body is not None:
            content = encode_json(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        self.requests_sent += 1
        API_CALLS.labels(self.account_name, "webapi").inc()
        return self.http.request(method, url, params=params, content=content, headers=sent)

    def _url(self, path: str) -> str:
        if path.startswith("https://"):
            if not path.startswith(self.account.url + "/"):
                raise ValueError(f"refusing to send the token to {urlsplit(path).netloc}: links must point at "
                                 f"{self.account.url}")
            return path
        return f"{self.service_root}/{path.lstrip('/')}"

    def _backoff(self, attempt: int) -> float:
        return self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random())

    def _pause(self, seconds: float, reason: str, method: str, url: str) -> None:
        self.retries += 1
        log.info("%s %s: %s, retrying in %.1f s", method, _display(url), reason, seconds)
        time.sleep(seconds)

    def _note_budget(self, response: httpx.Response) -> None:
        requests = response.headers.get("x-ms-ratelimit-burst-remaining-xrm-requests")
        seconds = response.headers.get("x-ms-ratelimit-time-remaining-xrm-requests")
        if requests is not None:
            self.budget.remaining_requests = int(float(requests.replace(",", "")))
        if seconds is not None:
            self.budget.remaining_seconds = float(seconds.replace(",", ""))

    def _error(self, response: httpx.Response, method: str, url: str) -> DataverseApiError:
        try:
            error = response.json().get("error", {})
        except ValueError:
            error = {}
        code = str(error.get("code") or response.status_code) if isinstance(error, dict) else str(response.status_code)
        message = str(error.get("message") if isinstance(error, dict) and error.get("message") else
                      response.reason_phrase)
        return DataverseApiError(response.status_code, code, self.scrub(message), method, _display(url),
                                 _retry_after(response))

    def scrub(self, text: str) -> str:
        """`text` with the token and every configured secret replaced by [redacted]."""
        for secret in self.tokens.secrets():
            text = text.replace(secret, "[redacted]")
        return text

    # ------------------------------------------------------------ reads

    def who_am_i(self) -> dict[str, Any]:
        return self.request("GET", "WhoAmI").json()

    def query_pages(self, entity_set: str, *, select: Sequence[str] = (), filter: str | None = None,
                    orderby: Sequence[str] = (), expand: str | None = None, page_size: int = 5000,
                    annotations: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """Pages of rows, following `@odata.nextLink` until the last page."""
        params = _options(select, filter, orderby, expand)
        headers = {"Prefer": _prefer(page_size, annotations)}
        body = self.request("GET", entity_set, params=params, headers=headers).json()
        yield body.get("value", [])
        while body.get("@odata.nextLink"):
            body = self.request("GET", body["@odata.nextLink"], headers=headers).json()
            yield body.get("value", [])

    def query(self, entity_set: str, **options: Any) -> Iterator[dict[str, Any]]:
        for page in self.query_pages(entity_set, **options):
            yield from page

    def change_pages(self, entity_set: str, *, select: Sequence[str] = (), link: str | None = None,
                     page_size: int = 5000) -> Iterator[ChangePage]:
        """A change-tracking read page by page: from `link` (a stored delta link, or a next link to resume a read
        that was cut short), or everything with a first delta link at the end when `link` is None.

        Raises DataverseApiError (400) when the link has expired; start again without one then."""
        headers = {"Prefer": f"odata.track-changes,{_prefer(page_size, None)}"}
        if link:
            response = self.request("GET", link, headers=headers)
        else:
            response = self.request("GET", entity_set, params=_options(select, None, (), None), headers=headers)
        while True:
            body = response.json()
            rows, deleted = [], []
            for item in body.get("value", []):
                if item.get("reason") == "deleted" or str(item.get("@odata.context", "")).endswith("$deletedEntity"):
                    deleted.append(str(item["id"]))
                else:
                    rows.append(item)
            next_link, delta_link = body.get("@odata.nextLink"), body.get("@odata.deltaLink")
            if next_link is None and delta_link is None:
                raise DataverseApiError(200, "no_delta_link", "the last page carried no @odata.deltaLink; is change "
                                        f"tracking enabled for {entity_set}?", "GET", entity_set)
            yield ChangePage(rows, deleted, next_link, delta_link, _server_time(response))
            if next_link is None:
                return
            response = self.request("GET", next_link, headers=headers)

    def changes(self, entity_set: str, *, select: Sequence[str] = (), delta_link: str | None = None,
                page_size: int = 5000) -> Changes:
        """All changes since `delta_link` (everything, the first time): new/updated rows, deleted ids, next link.

        Raises DataverseApiError (400) when the delta link has expired; start again without one then."""
        rows: list[dict[str, Any]] = []
        deleted: list[str] = []
        for page in self.change_pages(entity_set, select=select, link=delta_link, page_size=page_size):
            rows += page.rows
            deleted += page.deleted_ids
            if page.delta_link:
                return Changes(rows, deleted, page.delta_link)
        raise AssertionError("unreachable")  # change_pages ends with a delta link or raises

    def retrieve(self, entity_set: str, key: Key, select: Sequence[str] = ()) -> dict[str, Any] | None:
        try:
            return self.request("GET", f"{entity_set}{format_key(key)}", params=_options(select, None, (), None)) \
                .json()
        except DataverseApiError as exc:
            if exc.status == 404:
                return None
            raise

    # ------------------------------------------------------------ writes

    def create(self, entity_set: str, record: Mapping[str, Any]) -> str:
        response = self.request("POST", entity_set, json_body=dict(record))
        return _entity_id(response)

    def update(self, entity_set: str, key: Key, changes: Mapping[str, Any], *, if_match: str = "*") -> None:
        """Update an existing record (404 when absent); `if_match` W/"<version>" makes it optimistic (412)."""
        self.request("PATCH", f"{entity_set}{format_key(key)}", json_body=dict(changes),
                     headers={"If-Match": if_match})

    def upsert(self, entity_set: str, key: Key, record: Mapping[str, Any], *, insert_only: bool = False) -> str:
        """Create or update by id or alternate key; `insert_only` refuses to update (If-None-Match: *, 412)."""
        headers = {"If-None-Match": "*"} if insert_only else {}
        response = self.request("PATCH", f"{entity_set}{format_key(key)}", json_body=dict(record), headers=headers)
        return _entity_id(response)

    def delete(self, entity_set: str, key: Key, *, if_match: str | None = None) -> None:
        self.request("DELETE", f"{entity_set}{format_key(key)}", headers={"If-Match": if_match} if if_match else {})

    def create_multiple(self, entity_set: str, logical_name: str, records: Sequence[Mapping[str, Any]]) -> list[str]:
        body = self.request("POST", f"{entity_set}/Microsoft.Dynamics.CRM.CreateMultiple",
                            json_body={"Targets": _typed(logical_name, records)}).json()
        return list(body.get("Ids", []))

    def update_multiple(self, entity_set: str, logical_name: str, records: Sequence[Mapping[str, Any]]) -> None:
        """Each record carries its primary id column."""
        self.request("POST", f"{entity_set}/Microsoft.Dynamics.CRM.UpdateMultiple",
                     json_body={"Targets": _typed(logical_name, records)})

    def upsert_multiple(self, entity_set: str, logical_name: str, keyed: Sequence[tuple[Key, Mapping[str, Any]]]) \
            -> list[dict[str, Any]]:
        """(key, record) pairs; returns Dataverse's Results (RecordCreated, Target) in order."""
        targets = [{**dict(record), "@odata.id": f"{entity_set}{format_key(key)}"} for key, record in keyed]
        body = self.request("POST", f"{entity_set}/Microsoft.Dynamics.CRM.UpsertMultiple",
                            json_body={"Targets": _typed(logical_name, targets)}).json()
        return list(body.get("Results", []))

    # ------------------------------------------------------------ $batch

    def batch(self, items: Sequence[Operation | ChangeSet], *, continue_on_error: bool = False) -> list[Outcome]:
        """Run operations and change sets in one `$batch`; one Outcome per operation that was run, in order.

        Without continue_on_error Dataverse stops at the first failure (later operations get no outcome); a failed
        change set answers with its one error."""
        if sum(len(i.operations) if isinstance(i, ChangeSet) else 1 for i in items) > 1000:
            raise ValueError("a $batch holds at most 1,000 operations")
        boundary = f"batch_{uuid.uuid4()}"
        body = _encode_batch(items, boundary, self.service_root)
        headers = {"Content-Type": f"multipart/mixed; boundary={boundary}"}
        if continue_on_error:
            headers["Prefer"] = "odata.continue-on-error"
        response = self.request("POST", "$batch", content=body, headers=headers)
        return parse_batch_response(response.headers.get("content-type", ""), response.content)

    # ------------------------------------------------------------ metadata

    def entity(self, logical_name: str) -> dict[str, Any]:
        """EntityDefinitions(LogicalName=...) with its Attributes, Keys and ManyToOneRelationships (lookups)."""
        return self.request("GET", f"EntityDefinitions(LogicalName='{_escape(logical_name)}')",
                            params={"$expand": "Attributes,Keys,ManyToOneRelationships"}).json()

    def choice_columns(self, logical_name: str) -> list[dict[str, Any]]:
        """Attribute metadata of every choice column of a table (picklist, state, status, multi-select), each with
        its expanded `OptionSet` (Name, IsGlobal, Options)."""
        found: list[dict[str, Any]] = []
        for cast in CHOICE_METADATA_TYPES:
            body = self.request("GET", f"EntityDefinitions(LogicalName='{_escape(logical_name)}')/Attributes/"
                                       f"Microsoft.Dynamics.CRM.{cast}",
                                params={"$select": "LogicalName", "$expand": "OptionSet"}).json()
            found += body.get("value", [])
        return found

    def option_sets(self, logical_name: str) -> dict[str, dict[int, str]]:
        """Choice columns of a table (picklist, state, status, multi-select) as {column: {value: label}}."""
        return {attribute["LogicalName"]: {int(o["Value"]): option_label(o)
                                           for o in (attribute.get("OptionSet") or {}).get("Options", [])}
                for attribute in self.choice_columns(logical_name)}


CHOICE_METADATA_TYPES = ("PicklistAttributeMetadata", "StateAttributeMetadata", "StatusAttributeMetadata",
                         "MultiSelectPicklistAttributeMetadata")


def localized_label(label: Any) -> str:
    """A metadata Label's text in the user's language (UserLocalizedLabel), else its first localized label."""
    if not isinstance(label, Mapping):
        return ""
    localized = label.get("UserLocalizedLabel") or next(iter(label.get("LocalizedLabels") or []), None) or {}
    return str(localized.get("Label") or "")


def option_label(option: Mapping[str, Any]) -> str:
    return localized_label(option.get("Label"))


# ---------------------------------------------------------------- helpers

def format_key(key: Key) -> str:
    """`(<guid>)` or `(name='value',other=5)` with quotes doubled inside string values."""
    if isinstance(key, str):
        return f"({uuid.UUID(key)})"
    parts = [f"{name}='{_escape(str(value))}'" if isinstance(value, str) else f"{name}={value}"
             for name, value in key.items()]
    return f"({','.join(parts)})"


def _escape(text: str) -> str:
    return text.replace("'", "''")


def encode_json(body: Any) -> str:
    """JSON text for a request body; Decimal values become JSON numbers with exactly their digits (json.dumps
    would refuse them, float() would round them). The placeholder carries a random marker, so no string value
    can pass for one."""
    marker = f"decimal-{uuid.uuid4().hex}:"

    def placeholder(value: Any) -> str:
        if isinstance(value, Decimal) and value.is_finite():
            return f"{marker}{value}"
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    text = json.dumps(body, default=placeholder)
    return re.sub(f'"{marker}(-?[0-9.]+(?:E[+-]?[0-9]+)?)"', r"\1", text) if marker in text else text


def _server_time(response: httpx.Response) -> datetime | None:
    try:
        return parsedate_to_datetime(response.headers["date"])
    except (KeyError, TypeError, ValueError):
        return None


def _options(select: Sequence[str], filter: str | None, orderby: Sequence[str], expand: str | None) \
        -> dict[str, str]:
    params = {}
    if select:
        params["$select"] = ",".join(select)
    if filter:
        params["$filter"] = filter
    if orderby:
        params["$orderby"] = ",".join(orderby)
    if expand:
        params["$expand"] = expand
    return params


def _prefer(page_size: int, annotations: str | None) -> str:
    prefer = f"odata.maxpagesize={min(max(page_size, 1), 5000)}"
    return prefer + (f',odata.include-annotations="{annotations}"' if annotations else "")


def _typed(logical_name: str, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"@odata.type": f"Microsoft.Dynamics.CRM.{logical_name}", **dict(r)} for r in records]


def _entity_id(response: httpx.Response) -> str:
    location = response.headers.get("OData-EntityId") or response.headers.get("Location") or ""
    match = re.search(r"\(([0-9a-fA-F-]{36})\)$", location)
    if match is None:
        raise DataverseApiError(response.status_code, "no_entity_id", "the response carried no OData-EntityId",
                                response.request.method, _display(str(response.request.url)))
    return match.group(1)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _display(url: str) -> str:
    """A URL for messages: path only (query strings may hold filter values)."""
    return urlsplit(url).path


def _encode_batch(items: Sequence[Operation | ChangeSet], boundary: str, service_root: str) -> bytes:
    chunks = []
    for item in items:
        if isinstance(item, ChangeSet):
            inner = f"changeset_{uuid.uuid4()}"
            parts = "".join(f"--{inner}\r\n{_encode_operation(op, service_root, op.content_id or str(n))}"
                            for n, op in enumerate(item.operations, start=1))
            chunks.append(f"--{boundary}\r\nContent-Type: multipart/mixed; boundary={inner}\r\n\r\n"
                          f"{parts}--{inner}--\r\n")
        else:
            chunks.append(f"--{boundary}\r\n{_encode_operation(item, service_root, None)}")
    return ("".join(chunks) + f"--{boundary}--\r\n").encode()


def _encode_operation(op: Operation, service_root: str, content_id: str | None) -> str:
    url = op.url if op.url.startswith(("$", "https://")) else f"{service_root}/{op.url.lstrip('/')}"
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id:
        lines.append(f"Content-ID: {content_id}")
    lines += ["", f"{op.method} {quote(url, safe=_URL_SAFE)} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in op.headers.items()]
    if op.body is not None:
        lines += ["Content-Type: application/json; type=entry", "", encode_json(op.body)]
    else:
        lines += [""]
    return "\r\n".join(lines) + "\r\n"


def parse_batch_response(content_type: str, content: bytes) -> list[Outcome]:
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise DataverseApiError(200, "bad_batch_response", "the $batch answer is not multipart", "POST", "$batch")
    outcomes: list[Outcome] = []
    for part in content.decode("utf-8").split(f"--{match.group(1)}")[1:]:
        if part.startswith("--"):
            break
        head, _, rest = part.replace("\r\n", "\n").lstrip("\n").partition("\n\n")
        headers = _header_map(head)
        if headers.get("content-type", "").startswith("multipart/mixed"):
            outcomes += parse_batch_response(headers["content-type"], rest.encode())
        else:
            outcomes.append(_outcome(rest, headers.get("content-id")))
    return outcomes


def _outcome(text: str, content_id: str | None) -> Outcome:
    status_line, _, rest = text.partition("\n")
    head, _, body = rest.partition("\n\n")
    match = _STATUS_LINE.match(status_line)
    body = body.strip()
    try:
        parsed: Any = json.loads(body) if body else None
    except ValueError:
        parsed = body
    return Outcome(int(match.group(1)) if match else 0, _header_map(head), parsed, content_id)


def _header_map(block: str) -> dict[str, str]:
    headers = {}
    for line in block.split("\n"):
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return headers
