"""Web Services v2.0 calls of the Oracle CRM On Demand client: QueryPage, InsertOrUpdate batches with
per-record outcomes, and DeletedItemQueryPage.

Oracle recommends Web Services, not REST, for bulk work (REST API Developer's Guide overview). Messages follow
the Web Services On Demand Guide: `<Object><Method>_Input` in `urn:crmondemand/ws/ecbs/<object>/`, QueryPage
paging with `pagesize` (<= 100) / `startrownum` and the `lastpage` answer, query expressions in field elements
(connectors/oracle/query.py builds them), `sortorder`/`sortsequence` attributes, and `<Echo>Off</Echo>` so the
sync's own writes raise no integration events.

Per-record outcomes: OOD processes a write batch (at most 20 records) all or nothing -- "If a single record in
a batch causes an error, the entire batch is not processed ... the batch can be split into smaller batches so
that the records that do not cause errors can be processed" (Batch Processing, OnDemWebSvcs_BestPractices18).
`insert_or_update` does exactly that: a batch that fails on data is split in halves until the failing records
stand alone, so every record ends with its own outcome (new or updated Id, ModifiedDate, or OOD's error code,
symbol, message and log file). A batch of n records with one bad record costs about 1 + 2*log2(n) calls.

InsertOrUpdate is documented for Web Services v1.0; on a v2.0 service that answers "operation not supported" the
client falls back, once and for good, to the documented v2.0 calls: a QueryPage for the batch's user-key values,
then Execute with `operation="insert"` or `"update"` per record.

Every call passes the session's pacer (at least 50 ms apart); "The maximum rate of requests was exceeded. Please
try again in N ms" waits N ms and retries; a session that is gone is signed in again.
"""
from __future__ import annotations

import random
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Callable, Iterator, Mapping, Sequence
from xml.sax.saxutils import escape

import httpx

from .auth import Session
from .errors import (BAD_CREDENTIALS, SESSION_QUOTA, OracleApiError, RateLimited, SessionExpired, SessionQuotaReached,
                     SignInFailed, TransportError)
from .query import ws_any_of, ws_term
from .timezone import UserClock

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
# Rate refusals a request waits out before giving up: processes sharing the user's stateless session take turns
# in its 20 requests a second, so refusals come in runs (each answer says how many ms to wait)
RATE_REFUSALS = 200
# WS-Security 1.0 (OASIS): the namespace OOD reads as a stateless request (Enabling Support for Stateless Requests)
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
PASSWORD_TEXT = ("http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
                 "#PasswordText")
UNSUPPORTED_OPERATION = "SBL-EAI-04113"
_RATE_TEXT = "maximum rate of requests was exceeded"
_TRY_AGAIN = re.compile(r"try again in (\d+) ms")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_SESSION_CODES = ("SBL-ODU-01006", "SBL-ODU-01002")
DELETED_ITEM_FIELDS = ("DeletedItemId", "DeletedById", "DeletedBy", "DeletedDate", "Name", "ObjectId", "Type",
                       "ExternalSystemId")


@dataclass(frozen=True)
class WsPage:
    records: list[dict[str, str]]
    last_page: bool
    record_count: int | None


@dataclass(frozen=True)
class Outcome:
    """What happened to one record of an insert_or_update call (`index` is its position in the input)."""
    index: int
    ok: bool
    operation: str = ""  # insert | update
    id: str | None = None
    modified: datetime | None = None  # UTC
    error: OracleApiError | None = None


@dataclass(frozen=True)
class DeletedItem:
    deleted_item_id: str
    object_id: str
    type: str
    name: str
    external_id: str
    deleted_at: datetime  # UTC (a repeated wall-clock time read as its first occurrence)
    deleted_by: str
    deleted_text: str = ""  # DeletedDate as OOD wrote it: the user's wall clock, MM/DD/YYYY hh:mm:ss


class WebServices:
    def __init__(self, session: Session, clock: UserClock, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.session, self.clock, self.sleep = session, clock, sleep
        self.config = session.config
        self.insert_or_update_supported = True
        self.calls = 0

    # ---------------------------------------------------------------- QueryPage

    def query_page(self, record_type: str, fields: Sequence[str], *, filters: Mapping[str, str] | None = None,
                   sort: Sequence[tuple[str, str]] = (), searchspec: str = "", page_size: int | None = None,
                   start_row: int = 0, count: bool = False) -> WsPage:
        """One page of `<Object>QueryPage`: `fields` to return, `filters` {field: expression text} (query.ws_term,
        ws_any_of), `sort` [(field, 'ASC'|'DESC')] in priority order."""
        filters = dict(filters or {})
        order = {name: (position + 1, direction.upper()) for position, (name, direction) in enumerate(sort)}
        names = list(dict.fromkeys([*fields, *filters, *order]))
        elements = []
        for name in names:
            attrs = ""
            if name in order:
                sequence, direction = order[name]
                attrs = f' sortorder="{_direction(direction)}" sortsequence="{sequence}"'
            elements.append(f"<{_name(name)}{attrs}>{escape(filters.get(name, ''))}</{name}>")
        size = page_size or self.config.page_size
        spec = f' searchspec="{escape(searchspec, {chr(34): "&quot;"})}"' if searchspec else ""
        listing = (f'<ListOf{_name(record_type)} pagesize="{size}" startrownum="{start_row}" '
                   f'recordcountneeded="{"true" if count else "false"}"><{record_type}{spec}>{"".join(elements)}'
                   f"</{record_type}></ListOf{record_type}>")
        output = self._call(record_type, "QueryPage", listing)
        listing_element = _child(output, f"ListOf{record_type}")
        if listing_element is None:
            raise OracleApiError(f"{record_type}QueryPage answered without ListOf{record_type}")
        records = [_record(r) for r in listing_element if _local(r.tag) == record_type]
        total = listing_element.get("recordcount")
        return WsPage(records, listing_element.get("lastpage", "true").lower() == "true",
                      int(total) if total is not None else None)

    def query(self, record_type: str, fields: Sequence[str], **kwargs: Any) -> Iterator[dict[str, str]]:
        """Every record of a QueryPage query, page after page until lastpage."""
        start = 0
        while True:
            page = self.query_page(record_type, fields, start_row=start, **kwargs)
            yield from page.records
            if page.last_page or not page.records:
                return
            start += len(page.records)

    # ---------------------------------------------------------------- writes

    def insert_or_update(self, record_type: str, records: Sequence[Mapping[str, Any]], *,
                         user_key: str = "ExternalSystemId", echo: bool = True) -> list[Outcome]:
        """Insert or update each record, matched on `user_key` (each record must carry it), in batches of
        `ws_batch_size`; returns one Outcome per record, in input order."""
        outcomes: list[Outcome] = []
        indexed = list(enumerate(records))
        for start in range(0, len(indexed), self.config.ws_batch_size):
            batch = indexed[start:start + self.config.ws_batch_size]
            missing = [(i, r) for i, r in batch if not r.get(user_key)]
            outcomes += [Outcome(i, False, error=OracleApiError(f"record {i} has no {user_key}")) for i, _ in missing]
            keyed = [(i, r) for i, r in batch if r.get(user_key)]
            if keyed:
                outcomes += _splitting(keyed, lambda part: self._write_batch(record_type, part, user_key, echo))
        return sorted(outcomes, key=lambda o: o.index)

    def write(self, record_type: str, method: str, records: Sequence[Mapping[str, Any]], *,
              echo: bool = True) -> list[Outcome]:
        """`<Object>Insert`, `Update` or `Delete` of `records` (Update and Delete identify each record by its
        Id) in batches of `ws_batch_size`, split until every record has its own Outcome, in input order."""
        if method not in ("Insert", "Update", "Delete"):
            raise ValueError(f"write() does Insert, Update or Delete, not {method!r}")
        outcomes: list[Outcome] = []
        indexed = list(enumerate(records))
        for start in range(0, len(indexed), self.config.ws_batch_size):
            batch = indexed[start:start + self.config.ws_batch_size]
            outcomes += _splitting(batch, lambda part: self._plain_batch(record_type, method, part, echo))
        return sorted(outcomes, key=lambda o: o.index)

    def _plain_batch(self, record_type: str, method: str, batch: list[tuple[int, Mapping[str, Any]]],
                     echo: bool) -> list[Outcome]:
        body = "".join(f"<{record_type}>{self._fields(r)}</{record_type}>" for _, r in batch)
        output = self._call(record_type, method, f"<ListOf{record_type}>{body}</ListOf{record_type}>" + _echo(echo))
        return self._outcomes(record_type, batch, output)

    def _write_batch(self, record_type: str, batch: list[tuple[int, Mapping[str, Any]]], user_key: str,
                     echo: bool) -> list[Outcome]:
        if self.insert_or_update_supported:
            body = "".join(f"<{record_type}>{self._fields(r)}</{record_type}>" for _, r in batch)
            try:
                output = self._call(record_type, "InsertOrUpdate", f"<ListOf{record_type}>{body}"
                                    f"</ListOf{record_type}>" + _echo(echo))
                return self._outcomes(record_type, batch, output)
            except OracleApiError as exc:
                if exc.code != UNSUPPORTED_OPERATION:
                    raise
                self.insert_or_update_supported = False
        return self._execute_upsert(record_type, batch, user_key, echo)

    def _execute_upsert(self, record_type: str, batch: list[tuple[int, Mapping[str, Any]]], user_key: str,
                        echo: bool) -> list[Outcome]:
        """The documented v2.0 way: look the keys up, then Execute insert/update per record."""
        keys = [str(r[user_key]) for _, r in batch]
        found = {row.get(user_key, ""): row.get("Id", "") for row in
                 self.query(record_type, ["Id", user_key], filters={user_key: ws_any_of(keys)})}
        body = []
        for _, record in batch:
            existing = found.get(str(record[user_key]))
            if existing:
                values = {k: v for k, v in record.items() if k != user_key}
                body.append(f'<{record_type} operation="update"><Id>{escape(existing)}</Id>{self._fields(values)}'
                            f"</{record_type}>")
            else:
                body.append(f'<{record_type} operation="insert">{self._fields(record)}</{record_type}>')
        output = self._call(record_type, "Execute", f"<ListOf{record_type}>{''.join(body)}</ListOf{record_type}>"
                            + _echo(echo))
        return self._outcomes(record_type, batch, output)

    def _outcomes(self, record_type: str, batch: list[tuple[int, Mapping[str, Any]]], output: ET.Element) \
            -> list[Outcome]:
        listing = _child(output, f"ListOf{record_type}")
        rows = [r for r in listing if _local(r.tag) == record_type] if listing is not None else []
        if len(rows) != len(batch):
            raise OracleApiError(f"{record_type} write answered {len(rows)} records for {len(batch)} sent")
        outcomes = []
        for (index, _), row in zip(batch, rows):
            values = _record(row)
            modified = values.get("ModifiedDate")
            outcomes.append(Outcome(index, True, row.get("operation", ""), values.get("Id"),
                                    _xsd_datetime(modified) if modified else None))
        return outcomes

    # ---------------------------------------------------------------- DeletedItemQueryPage

    def deleted_items(self, record_type: str | None = None, *, since: datetime | None = None,
                      page_size: int | None = None) -> Iterator[DeletedItem]:
        """Deleted records (of one Type when given) sorted by DeletedDate, from `since` (inclusive) on.
        DeletedDate travels as the user's wall-clock time; `since` is sent as XSD UTC and the answers are
        converted with the earliest-instant rule of timezone.py."""
        filters = {}
        if record_type:
            filters["Type"] = ws_term("=", record_type)
        if since is not None:
            filters["DeletedDate"] = ws_term(">=", since)
        start = 0
        while True:
            items, last_page = self.deleted_item_page(filters, start=start, page_size=page_size)
            yield from items
            if last_page or not items:
                return
            start += len(items)

    def deleted_item_page(self, filters: Mapping[str, str], *, start: int = 0, page_size: int | None = None) \
            -> tuple[list[DeletedItem], bool]:
        """One page of DeletedItemQueryPage: `filters` {field: expression text} on the DeletedItem fields."""
        template = "".join(f"<{_name(f)}>{escape(filters.get(f, ''))}</{f}>" for f in DELETED_ITEM_FIELDS)
        size = page_size or self.config.page_size
        output = self._call_deleted_items(f"<ListOfDeletedItem><DeletedItem>{template}</DeletedItem>"
                                          f"</ListOfDeletedItem><PageSize>{size}</PageSize>"
                                          f"<StartRowNum>{start}</StartRowNum>")
        listing = _child(output, "ListOfDeletedItem")
        rows = [_record(r) for r in (listing if listing is not None else [])]
        items = [DeletedItem(row.get("DeletedItemId", ""), row.get("ObjectId", ""), row.get("Type", ""),
                             row.get("Name", ""), row.get("ExternalSystemId", ""),
                             self.clock.parse_v1(row["DeletedDate"]), row.get("DeletedBy", ""), row["DeletedDate"])
                 for row in rows]
        return items, (output.findtext("{*}LastPage") or "true").strip().lower() == "true"

    # ---------------------------------------------------------------- transport

    def _fields(self, values: Mapping[str, Any]) -> str:
        return "".join(f"<{_name(k)}>{escape(_text(v))}</{k}>" for k, v in values.items())

    def _call(self, record_type: str, method: str, inner: str) -> ET.Element:
        namespace = f"urn:crmondemand/ws/ecbs/{_name(record_type).lower()}/"
        element = f"{record_type}{method}_Input"
        return self._post(f'<{element} xmlns="{namespace}">{inner}</{element}>',
                          f'"document/{namespace}:{record_type}{method}"')

    def _call_deleted_items(self, inner: str) -> ET.Element:
        namespace = "urn:crmondemand/ws/deleteditem/"
        return self._post(f'<DeletedItemWS_DeletedItemQueryPage_Input xmlns="{namespace}">{inner}'
                          "</DeletedItemWS_DeletedItemQueryPage_Input>", f'"document/{namespace}:DeletedItemQueryPage"')

    def _header(self) -> str:
        """The SOAP header: a UsernameToken for a stateless request, empty when the session cookie is sent."""
        if not self.config.ws_stateless:
            return "<soapenv:Header/>"
        password = escape(self.config.password.get_secret_value())
        return (f'<soapenv:Header><wsse:Security xmlns:wsse="{WSSE}"><wsse:UsernameToken>'
                f"<wsse:Username>{escape(self.config.username)}</wsse:Username>"
                f'<wsse:Password Type="{PASSWORD_TEXT}">{password}</wsse:Password>'
                "</wsse:UsernameToken></wsse:Security></soapenv:Header>")

    def _post(self, body: str, action: str) -> ET.Element:
        """POST one SOAP request with sign-in, pacing, re-sign-in, rate-limit waits and retries; returns the
        first element of the response Body."""
        envelope = (f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_ENV}">'
                    f"{self._header()}<soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>").encode()
        attempt = expiries = rate_refusals = 0
        while True:
            cookie = {} if self.config.ws_stateless else self.session.cookie()
            headers = {**cookie, "Content-Type": "text/xml; charset=utf-8", "SOAPAction": action}
            self.session.pacer.acquire()
            self.calls += 1
            try:
                response = self.session.http.post(f"{self.config.base_url}/Services/Integration", content=envelope,
                                                  headers=headers)
                self.session.pacer.release()
                error = _fault(response, self.session.scrub)
                if error is None:
                    return _body(response)
            except httpx.HTTPError as exc:
                self.session.pacer.release()
                error = TransportError(self.session.scrub(f"{type(exc).__name__}: {exc}"), transient=True)
            if isinstance(error, SessionExpired) and expiries < self.config.max_retries + 3:
                expiries += 1
                self.session.forget()
                continue
            if isinstance(error, RateLimited) and rate_refusals < RATE_REFUSALS:
                # a refused request did nothing: wait as told, plus a little so processes sharing the stateless
                # session do not all come back at the same instant
                rate_refusals += 1
                self.session.pacer.rate_limited((error.retry_after or 0.05) + random.random() * 0.05 * rate_refusals)
                continue
            if not error.retryable or attempt >= self.config.max_retries:
                raise error
            attempt += 1
            self.sleep(min(30.0, 0.5 * 2 ** attempt) * (0.5 + random.random() / 2))


# ---------------------------------------------------------------- parsing


def _body(response: httpx.Response) -> ET.Element:
    root = ET.fromstring(response.content)
    body = root.find(f"{{{SOAP_ENV}}}Body")
    if body is None or len(body) == 0:
        raise OracleApiError("the SOAP response has an empty Body", status=response.status_code)
    return body[0]


def _fault(response: httpx.Response, scrub: Callable[[str], str]) -> OracleApiError | None:
    """None for a 200 answer; the fault (or HTTP error) as the matching OracleApiError otherwise."""
    if response.status_code == 200:
        return None
    try:
        fault = ET.fromstring(response.content).find(f"{{{SOAP_ENV}}}Body/{{{SOAP_ENV}}}Fault")
    except ET.ParseError:
        fault = None
    if fault is None:
        return OracleApiError(scrub(response.text.strip()[:500] or response.reason_phrase),
                              status=response.status_code)
    def text(path: str) -> str:
        return (fault.findtext(path) or "").strip()  # type: ignore[union-attr]

    code = text(".//{*}errorcode") or text(".//ErrorCode")
    message = scrub(text(".//{*}errormsg") or text(".//ErrorMessage") or text("faultstring"))
    symbol = text(".//{*}errorsymbol")
    details = dict(status=response.status_code, code=code, symbol=symbol, log_file=text(".//{*}logfilename"))
    if _RATE_TEXT in message:
        error = RateLimited(message, **details)
        wait = _TRY_AGAIN.search(message)
        error.retry_after = int(wait.group(1)) / 1000 + 0.005 if wait else None
        return error
    if code in _SESSION_CODES or "Session is not available" in message:
        return SessionExpired(message, **details)
    if code == BAD_CREDENTIALS:  # a stateless request's UsernameToken was refused
        return SignInFailed(message, **details)
    if code == SESSION_QUOTA:
        return SessionQuotaReached(message, transient=True, **details)
    return OracleApiError(message, transient=text("faultcode").endswith("Server") and not symbol, **details)


def _splitting(batch: list[tuple[int, Mapping[str, Any]]],
               write: Callable[[list[tuple[int, Mapping[str, Any]]]], list[Outcome]]) -> list[Outcome]:
    """Write a batch; when OOD refuses it for its data (all or nothing), write each half, down to single records,
    so every record ends with its own outcome (Batch Processing, OnDemWebSvcs_BestPractices18)."""
    try:
        return write(batch)
    except OracleApiError as exc:
        if not _data_error(exc):
            raise
        if len(batch) == 1:
            return [Outcome(batch[0][0], False, error=exc)]
    middle = len(batch) // 2
    return _splitting(batch[:middle], write) + _splitting(batch[middle:], write)


def _data_error(error: OracleApiError) -> bool:
    """A fault about the records themselves (splitting the batch can isolate it)."""
    return not isinstance(error, (SessionExpired, RateLimited, TransportError)) and not error.transient and \
        error.code != UNSUPPORTED_OPERATION


def _record(element: ET.Element) -> dict[str, str]:
    return {_local(c.tag): (c.text or "") for c in element}


def _child(element: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in element if _local(c.tag) == name), None)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not an OOD record type or field integration tag")
    return name


def _direction(direction: str) -> str:
    if direction not in ("ASC", "DESC"):
        raise ValueError(f"sort direction must be ASC or DESC, not {direction!r}")
    return direction


def _echo(echo: bool) -> str:
    return "" if echo else "<Echo>Off</Echo>"


def _text(value: Any) -> str:
    """A value as Web Services element text: XSD forms for booleans, dates and (UTC) datetimes."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("pass aware datetimes to Web Services writes (they are sent as UTC)")
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _xsd_datetime(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
