"""The Oracle CRM On Demand account (`type: oracle` in crmsync.yaml or `crmsync account add`): where, who, which
time zone, which API reads changes, how fast.

    accounts:
      ood:
        type: oracle
        url: https://secure-ausomxabc.crmondemand.com
        username: COMPANY/INTEGRATION
        password: ...                      # SecretStr: encrypted at rest by crmsync/accounts.py, masked on output
        user_timezone: America/Los_Angeles # optional: read from the user's profile when OOD shows it
        api: webservices                   # or rest: the API the change source reads ModifiedDate through

Invariants: `url` is https (OOD and its sandbox speak nothing else); `user_timezone`, when given, is an IANA
name; the limits default to Oracle's documented ones (30 REST requests a minute per session, 50 ms between Web
Services requests), changed only for a sandbox whose levers are changed too.
"""
from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator

from crmsync.connectors import AccountBase, https_url

from .config import OracleConfig


class OracleAccount(AccountBase):
    type: Literal["oracle"] = "oracle"
    url: str = Field(description="https://<host>[:port] of the OOD pod (or the sandbox)")
    username: str = Field(min_length=1, description="sign-in id, e.g. COMPANY/USER")
    password: SecretStr
    user_timezone: str | None = Field(None, description="IANA zone of the OOD user; None: read from the profile")
    api: Literal["rest", "webservices"] = Field(
        "webservices", description="API the change source reads through (writes, queries and deleted items always "
                                   "use Web Services: batches of 20, search specifications, DeletedItemQueryPage)")
    rest_requests_per_window: int = Field(30, ge=1, description="OOD's REST rate limit per session and window")
    rest_window_seconds: float = Field(60.0, gt=0, description="OOD's REST rate window: one minute (a sandbox "
                                                               "may shorten it)")
    ws_min_interval_ms: int = Field(50, ge=0, description="OOD's minimum spacing of Web Services requests")

    @field_validator("url")
    @classmethod
    def _https_only(cls, value: str) -> str:
        return https_url(value)  # Oracle CRM On Demand speaks HTTPS only

    @field_validator("user_timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"user_timezone {value!r} is not an IANA time zone name such as "
                             "America/Los_Angeles") from None
        return value

    def client_config(self, user_timezone: str) -> OracleConfig:
        """The API client's configuration for this account, in the given user time zone."""
        return OracleConfig(base_url=self.url, username=self.username, password=self.password, ca_file=self.ca_file,
                            user_timezone=user_timezone, rest_requests_per_window=self.rest_requests_per_window,
                            rest_window_seconds=self.rest_window_seconds,
                            ws_min_interval_seconds=self.ws_min_interval_ms / 1000)
