"""A small direct client for Oracle CRM On Demand, in the spirit of simple-salesforce: REST calls here, Web
Services calls in webservices.py, both over one httpx client that trusts exactly the configured CA.

    client = OracleClient(OracleConfig(base_url="https://127.0.0.1:8445", username="CRMSYNC/INTEGRATION",
                                       password="...", ca_file=ca_path, user_timezone="America/Los_Angeles"))
    since = datetime(2024, 11, 3, 8, 0, tzinfo=timezone.utc)
    for contact in client.query("Contacts", fields=["Id", "ContactEmail", "ModifiedDate"],
                                q=rest_term("ModifiedDate", ">=", since, client.clock),
                                order_by=order_by("ModifiedDate", "Id")):
        changed_at = client.clock.parse_rest(contact["ModifiedDate"])   # user wall clock -> UTC
    new_id = client.create("Contacts", {"ContactFirstName": "Ann", "ContactLastName": "Lee"})
    client.web_services.insert_or_update("Contact", records)             # batches with per-record outcomes

Behaviour (REST API Developer's Guide pages cited in the methods):
- sessions: signed in on first use, signed in again when OOD says the session is gone (401/403), then the
  request is retried;
- pacing: every REST request passes the session's `Pacer` (30 a minute by default); a rate-limit answer (matched
  on Oracle's text "The maximum rate of requests was exceeded", whatever the status) waits for the next window,
  is counted in `usage()` and retried;
- retries: transport errors and 5xx answers are retried with backoff, except a POST whose request may have
  reached the server (a retried create could duplicate the record);
- errors: `OracleApiError` with the SBL code and Oracle's message, scrubbed of the password, the Basic header and
  session ids;
- values: datetimes in bodies and queries are aware instants converted to the user's wall clock (`clock`), REST
  datetimes read back with `clock.parse_rest`.
"""
from __future__ import annotations

import random
import re
import ssl
import time
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Callable, Iterator, Mapping, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx

from .auth import Session, log_off, rest_sign_in, ws_sign_in
from .config import OracleConfig
from .errors import REST_RATE_TEXT, OracleApiError, RateLimited, Scrubber, SessionExpired, TransportError
from .pacer import Budget, Pacer
from .timezone import UserClock
from .webservices import WebServices

SORT_AND_FILTER_CODE = "SBL-ODS-00127"  # the sandbox's code for "a query can either filter or sort"
_JSON = "application/vnd.oracle.adf.resource+json"
_IDEMPOTENT = ("GET", "PATCH", "DELETE")
_IANA_NAME = re.compile(r"([A-Za-z_]+(?:/[A-Za-z0-9_+\-]+)+)\s*$")


@dataclass(frozen=True)
class Page:
    records: list[dict[str, Any]]
    offset: int
    limit: int
    last_page: bool


@dataclass(frozen=True)
class Usage:
    """Request counts and where the REST session stands in its rate window."""
    rest_requests: int
    ws_requests: int
    rate_limited: int  # rate-limit answers received (REST and Web Services)
    sign_ins: int
    waited_seconds: float  # time spent pacing
    rest_window: Budget


class OracleClient:
    def __init__(self, config: OracleConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.clock = UserClock(config.user_timezone)
        self.scrub = Scrubber()
        self.scrub.add_credentials(config.username, config.password.get_secret_value())
        self.sleep = sleep
        self.http = httpx.Client(verify=_tls_context(config), trust_env=False, timeout=config.timeout_seconds)
        rest_pacer = Pacer(config.rest_requests_per_window, config.rest_window_seconds, sleep=sleep)
        self.rest = Session(self.http, config, self.scrub, rest_pacer, rest_sign_in)
        ws_pacer = Pacer(20, 1.0, min_interval=config.ws_min_interval_seconds, guard=0.0, sleep=sleep)
        self.ws_session = Session(self.http, config, self.scrub, ws_pacer, ws_sign_in)
        self.web_services = WebServices(self.ws_session, self.clock, sleep=sleep)

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Log both sessions off and close the connection pool."""
        base = self.config.base_url
        log_off(self.rest, f"{base}/OnDemand/user/Rest/Connection", {"action": "logoff"})
        log_off(self.ws_session, f"{base}/Services/Integration", {"command": "logoff"})
        self.http.close()

    def __enter__(self) -> "OracleClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connection(self) -> dict[str, Any]:
        """The REST connection attributes of the current session (OnDemRestAPI_Start5.html)."""
        self.rest.cookie()
        return self.rest.connection

    def usage(self) -> Usage:
        return Usage(self.rest.pacer.requests, self.ws_session.pacer.requests,
                     self.rest.pacer.rate_limited_count + self.ws_session.pacer.rate_limited_count,
                     self.rest.sign_ins + self.ws_session.sign_ins,
                     self.rest.pacer.waited + self.ws_session.pacer.waited, self.rest.pacer.budget())

    def profile_timezone(self) -> str | None:
        """The signed-in user's time zone as an IANA name, read from the User record's TimeZoneName (e.g.
        "(GMT-08:00) America/Los_Angeles"); None when the profile does not show one in that form."""
        user_id = self.connection.get("UserId")
        if not user_id:
            return None
        shown = str(self.get("Users", user_id, fields=["TimeZoneName"]).get("TimeZoneName") or "")
        found = _IANA_NAME.search(shown)
        if not found:
            return None
        try:
            ZoneInfo(found.group(1))
        except (ZoneInfoNotFoundError, ValueError):
            return None
        return found.group(1)

    def use_timezone(self, zone: str) -> None:
        """Read and write datetimes in `zone` from now on (an IANA name, e.g. from `profile_timezone`)."""
        self.config = self.config.model_copy(update={"user_timezone": zone})
        self.clock = UserClock(zone)
        self.web_services.clock = self.clock

    def server_time(self) -> datetime:
        """The server's clock now (the connection's ServerDate, the user's wall clock, as UTC): where a reader that
        must not miss anything starts. A repeated wall-clock time reads as its first occurrence, i.e. earlier."""
        response = self._request("GET", "/OnDemand/user/Rest/Connection")
        return self.clock.parse_rest(response.json()["Connection"]["ServerDate"])

    def check_timezone(self) -> None:
        """Raise ValueError when `user_timezone` disagrees with the server: the connection's ServerDate is the
        user's wall-clock time, so ServerDate minus the HTTP Date header is the user's current UTC offset."""
        response = self._request("GET", "/OnDemand/user/Rest/Connection")
        server_wall = response.json()["Connection"]["ServerDate"]
        now = datetime.strptime(response.headers["date"], "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=timezone.utc)
        observed = datetime.strptime(server_wall, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) - now
        expected = self.clock.offset_now(now)
        if abs((observed - expected).total_seconds()) > 120:
            raise ValueError(f"user_timezone {self.config.user_timezone} has UTC offset {expected} now, but OOD "
                             f"shows the user's time at offset {observed}: set user_timezone to the OOD user's "
                             "time zone (My Profile > Time Zone)")

    # ---------------------------------------------------------------- REST resources

    def query_page(self, resource: str, *, fields: Sequence[str] = (), q: str = "", order_by: str = "",
                   offset: int = 0, limit: int | None = None) -> Page:
        """One page of a collection ("Querying", "Sorting", "Paging Collection Resources", OnDemRestAPI_Ref23/28/29):
        `q` and `order_by` as built by connectors.oracle.query; `limit` at most 100."""
        limit = limit or self.config.page_size
        params: dict[str, Any] = {"offset": offset, "limit": limit, "onlyData": "true"}
        if fields:
            params["fields"] = ",".join(fields)
        if q:
            params["q"] = q
        if order_by:
            params["orderBy"] = order_by
        body = self._request("GET", self._path(resource), params=params).json()
        info = body.get("_contextInfo", {})
        records = body.get(resource.rsplit("/", 1)[-1], [])
        return Page(records, int(info.get("offset", offset)), int(info.get("limit", limit)),
                    bool(info.get("lastpage", True)))

    def query(self, resource: str, *, fields: Sequence[str] = (), q: str = "", order_by: str = "",
              page_size: int | None = None, sort_key: Callable[[dict[str, Any]], Any] | None = None) \
            -> Iterator[dict[str, Any]]:
        """Every record of a query, page by page until `lastpage`. Against a server that refuses to filter and
        sort at once (the v1.0 behaviour), it queries filter-only and sorts here: give `sort_key` for that case."""
        offset = 0
        try:
            while True:
                page = self.query_page(resource, fields=fields, q=q, order_by=order_by, offset=offset,
                                       limit=page_size)
                yield from page.records
                if page.last_page or not page.records:
                    return
                offset += len(page.records)
        except OracleApiError as exc:
            if exc.code != SORT_AND_FILTER_CODE or offset or not (q and order_by and sort_key):
                raise
        yield from sorted(self.query(resource, fields=fields, q=q, page_size=page_size), key=sort_key)

    def get(self, resource: str, record_id: str, fields: Sequence[str] = ()) -> dict[str, Any]:
        params = {"onlyData": "true", **({"fields": ",".join(fields)} if fields else {})}
        body = self._request("GET", self._path(f"{resource}/{record_id}"), params=params).json()
        return body[resource.rsplit("/", 1)[-1]][0]

    def create(self, resource: str, values: Mapping[str, Any]) -> str:
        """POST one record ("Creating ... Top-Level Resources"); returns the new Id from the Location header."""
        response = self._request("POST", self._path(resource), json={resource.rsplit("/", 1)[-1]:
                                                                     [self._encode(values)]}, expect=201)
        return response.headers["location"].rstrip("/").rsplit("/", 1)[-1]

    def update(self, resource: str, record_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
        name = resource.rsplit("/", 1)[-1]
        response = self._request("PATCH", self._path(f"{resource}/{record_id}"), json={name: [self._encode(values)]})
        return response.json()[name][0]

    def delete(self, resource: str, record_id: str) -> None:
        self._request("DELETE", self._path(f"{resource}/{record_id}"), expect=204)

    def describe(self, resource: str = "", parts: Sequence[str] = ()) -> dict[str, Any]:
        """Metadata ("Retrieving Metadata about Oracle CRM On Demand Resources", OnDemRestAPI_Ref30-33)."""
        params = {"fields": ",".join(parts)} if parts else {}
        path = self._path(f"{resource}/describe" if resource else "describe")
        return self._request("GET", path, params=params).json()["Resources"]

    def resources(self, parts: Sequence[str] = ("links",)) -> dict[str, Any]:
        """Every resource's metadata by resource name: the all-resources describe, paged over resources (its
        default page is 2 resources, "Retrieving Metadata about Oracle CRM On Demand Resources", Ref30)."""
        found: dict[str, Any] = {}
        while True:
            params = {"fields": ",".join(parts), "offset": len(found), "limit": 100}
            body = self._request("GET", self._path("describe"), params=params).json()
            found.update(body.get("Resources") or {})
            if body.get("_contextInfo", {}).get("lastpage", True) or not body.get("Resources"):
                return found

    # ---------------------------------------------------------------- transport

    def _path(self, relative: str) -> str:
        return f"/OnDemand/user/Rest/{self.config.api_version}/{relative.strip('/')}"

    def _encode(self, values: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for name, value in values.items():
            if isinstance(value, datetime):
                value = self.clock.format_rest(value)
            elif isinstance(value, date):
                value = value.isoformat()
            out[name] = value
        return out

    def _request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                 json: Any = None, expect: int = 200) -> httpx.Response:
        """One REST call with sign-in, pacing, re-sign-in, rate-limit waits and retries."""
        attempt = refusals = 0
        while True:
            headers = {**self.rest.cookie(), "Accept": _JSON}
            if json is not None:
                headers["Content-Type"] = _JSON
            self.rest.pacer.acquire()
            try:
                response = self.http.request(method, self.config.base_url + path, params=params, json=json,
                                             headers=headers)
            except httpx.HTTPError as exc:
                self.rest.pacer.release()
                error: OracleApiError = TransportError(self.scrub(f"{method} {path}: {type(exc).__name__}: {exc}"),
                                                       transient=True)
                sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                if method == "POST" and sent:
                    raise error from None
            else:
                self.rest.pacer.release()
                if response.status_code == expect:
                    return response
                error = self._error(response, path)
            if isinstance(error, (SessionExpired, RateLimited)) and refusals < self.config.max_retries + 3:
                refusals += 1
                if isinstance(error, SessionExpired):
                    self.rest.forget()
                else:
                    self.rest.pacer.rate_limited()
                continue
            if not error.retryable or attempt >= self.config.max_retries:
                raise error
            attempt += 1
            self.sleep(min(30.0, 0.5 * 2 ** attempt) * (0.5 + random.random() / 2))

    def _error(self, response: httpx.Response, path: str) -> OracleApiError:
        try:
            error = response.json()["Error"][0]
            message, code = str(error.get("detail", "")), str(error.get("errorCode", ""))
        except (ValueError, KeyError, IndexError, TypeError):
            message, code = response.text.strip()[:500] or response.reason_phrase, ""
        message = self.scrub(f"{path}: {message}")
        if REST_RATE_TEXT in message:
            return RateLimited(message, status=response.status_code, code=code)
        if response.status_code in (401, 403) and code != "SBL-ODU-01004":
            return SessionExpired(message, status=response.status_code, code=code)
        return OracleApiError(message, status=response.status_code, code=code, transient=response.status_code >= 500)


def _tls_context(config: OracleConfig) -> ssl.SSLContext:
    """Verification always on; only the configured CA when one is given (environment variables are ignored)."""
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    return context
