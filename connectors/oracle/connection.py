"""One signed-in Oracle CRM On Demand account: the connector's `Client` (crmsync.connectors.Client).

It wraps the API client (connectors/oracle/client.py: REST and Web Services sessions, pacing, retries, scrubbed
errors) and adds what the engine asks of every CRM client: the account name, the API budget (`usage()`), the
record types' REST resource names, and a Prometheus counter of rate-limit refusals.

The connection signs in when it is made, so wrong credentials fail there (with a scrubbed message). The user's
time zone: the account's `user_timezone` when set, else the signed-in user's profile (the User record's
TimeZoneName); when neither gives an IANA name the account is refused with a message that says to set
`user_timezone`. REST datetimes are that zone's wall-clock time, so nothing is read before the zone is known.

Record types are described once per DESCRIBE_SECONDS for every part that uses the connection (change sources,
sinks, queries, discovery): fields added in OOD are picked up within that time, and a rate-limited minute is
not spent describing again.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from prometheus_client import Counter

from crmsync.api_budget import API_CALLS
from crmsync.connectors import ApiUsage

from .account import OracleAccount
from .client import OracleClient
from .timezone import UserClock
from .types import OodField, fields_of

DESCRIBE_SECONDS = 300.0
RATE_LIMITED = Counter("crmsync_oracle_rate_limited_total",
                       "Requests OOD refused for its rate limit (the client waited for the next window and retried)",
                       ["account", "api"])
# Standard-template record types (Web Services name -> REST resource). Adobe's connector synced these only; a
# record type not listed is taken to be its name plus "s" (Oracle's plural resource names).
RESOURCES = {"Account": "Accounts", "Contact": "Contacts", "Opportunity": "Opportunities", "Lead": "Leads",
             "User": "Users", "Activity": "Activities", "Campaign": "Campaigns", "Asset": "Assets",
             "Product": "Products", "Solution": "Solutions", "Territory": "Territories", "Note": "Notes",
             "Category": "Categories", "Group": "Groups"}


def resource_of(record_type: str) -> str:
    """The REST collection of a record type ("Contact" -> "Contacts")."""
    return RESOURCES.get(record_type, f"{record_type}s")


def record_type_of(resource: str) -> str:
    """The record type of a REST collection ("Opportunities" -> "Opportunity")."""
    found = next((name for name, plural in RESOURCES.items() if plural == resource), None)
    return found or resource.removesuffix("s")


class OracleConnection:
    """The API client of one account, signed in lazily; `close()` logs both sessions off."""

    def __init__(self, account_name: str, account: OracleAccount) -> None:
        self.account_name = account_name
        self.account = account
        self.api = OracleClient(account.client_config(account.user_timezone or "UTC"))
        try:
            self.api.connection  # sign in now: wrong credentials fail here
            if account.user_timezone is None:
                self.api.use_timezone(self._profile_timezone())
        except BaseException:
            self.api.close()
            raise
        self._counted_refusals = 0
        self._counted_calls = {"rest": 0, "webservices": 0}
        self._described: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def _profile_timezone(self) -> str:
        zone = self.api.profile_timezone()
        if zone is None:
            raise ValueError(f"account {self.account_name!r}: the OOD user's profile shows no IANA time zone; set "
                             "user_timezone (e.g. America/Los_Angeles) to the user's My Profile > Time Zone")
        return zone

    @property
    def clock(self) -> UserClock:
        return self.api.clock

    def describe(self, record_type: str) -> dict[str, Any]:
        """The REST describe (attributes) of a record type, cached for DESCRIBE_SECONDS."""
        with self._lock:
            cached = self._described.get(record_type)
            if cached is not None and time.monotonic() - cached[0] < DESCRIBE_SECONDS:
                return cached[1]
        resource = resource_of(record_type)
        described = self.api.describe(resource, parts=("attributes",))[resource]
        with self._lock:
            self._described[record_type] = (time.monotonic(), described)
        return described

    def fields(self, record_type: str) -> dict[str, OodField]:
        """The record type's fields by integration tag (see `describe`)."""
        return fields_of(self.describe(record_type))

    @property
    def user_timezone(self) -> str:
        return self.api.config.user_timezone

    def count_refusals(self) -> None:
        """Move the rate-limit refusals the client absorbed since the last call into the Prometheus counter."""
        refused = self.api.usage().rate_limited
        if refused > self._counted_refusals:
            RATE_LIMITED.labels(self.account_name, self.account.api).inc(refused - self._counted_refusals)
            self._counted_refusals = refused

    def usage(self) -> ApiUsage:
        """Calls made (REST + Web Services) and the REST requests left in the current one-minute window: OOD's
        only published budget (Web Services are limited by spacing, not by a count)."""
        used = self.api.usage()
        self.count_refusals()
        for kind, calls in (("rest", used.rest_requests), ("webservices", used.ws_requests)):
            if calls > self._counted_calls[kind]:  # crmsync_crm_api_calls_total, as every client counts its calls
                API_CALLS.labels(self.account_name, kind).inc(calls - self._counted_calls[kind])
                self._counted_calls[kind] = calls
        return ApiUsage(calls=used.rest_requests + used.ws_requests, remaining=used.rest_window.remaining,
                        limit=used.rest_window.limit, window="minute")

    def whoami(self) -> dict[str, str]:
        """The company, the user and the API version of the signed-in REST session (its Connection resource)."""
        connection = self.api.connection
        return {"organization": str(connection.get("CompanyName") or "?"),
                "user": str(connection.get("UserLoginId") or connection.get("UserId") or "?"),
                "api_version": str(connection.get("apiVersion") or "?")}

    def close(self) -> None:
        self.api.close()
