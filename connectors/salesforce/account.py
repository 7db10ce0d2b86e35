"""A Salesforce account in crmsync.yaml or the account store: where to log in and with what.

`login_url` is https only (login.salesforce.com, test.salesforce.com with `sandbox: true`, a My Domain, or the
local sandbox); secrets are SecretStr, never printed. `auth: oauth` uses the OAuth 2.0 password flow with the
connected app's client id and secret, `soap` the partner API's login.

Change Data Capture (docs/salesforce.md): with `cdc: true` (the default) objects selected for change
notifications in Setup are read through the Pub/Sub API at `pubsub_endpoint` — by default Salesforce's global
endpoint for logins at *.salesforce.com / *.force.com, none elsewhere (the local sandbox's kit names its own), so
an account without a known endpoint polls every object. `cdc_objects` names the selection when the Tooling API
cannot be read. `api_client` is sent as `Sforce-Call-Options: client=<id>`: it is what Salesforce writes into the
`changeOrigin` of the change events our own writes cause.
"""
from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, field_validator

from crmsync.connectors import AccountBase, https_url


GLOBAL_PUBSUB_ENDPOINT = "api.pubsub.salesforce.com:7443"
HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):[0-9]{1,5}")


class SalesforceAccount(AccountBase):
    type: Literal["salesforce"] = "salesforce"
    login_url: str = "https://login.salesforce.com"
    username: str
    password: SecretStr
    security_token: SecretStr = SecretStr("")
    client_id: str | None = None
    client_secret: SecretStr | None = None
    sandbox: bool = False
    api_version: str = "59.0"
    auth: Literal["oauth", "soap"] = "oauth"
    request_timeout: float = Field(120.0, gt=0, description="seconds to wait for Salesforce's answer to a call "
                                   "before it counts as lost and is retried")
    cdc: bool = True
    pubsub_endpoint: str | None = None  # host:port of the Pub/Sub API (gRPC over TLS)
    cdc_objects: list[str] | None = None
    api_client: str = "crmsync"

    _check_url = field_validator("login_url")(classmethod(lambda cls, v: https_url(v)))

    @field_validator("pubsub_endpoint")
    @classmethod
    def _endpoint_form(cls, value: str | None) -> str | None:
        if value is not None and not HOST_PORT.fullmatch(value):
            raise ValueError(f"expected host:port of the Pub/Sub API, e.g. {GLOBAL_PUBSUB_ENDPOINT} (got {value!r}; "
                             "no scheme: it is always TLS)")
        return value

    @field_validator("api_client")
    @classmethod
    def _client_form(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-/]{1,40}", value):
            raise ValueError(f"letters, digits and _ . - / only, at most 40 (got {value!r})")
        return value

    def pubsub_target(self) -> str | None:
        """Where the Pub/Sub API answers for this org: the configured endpoint, Salesforce's global one for a
        Salesforce login host, or None (no Change Data Capture: every object is polled)."""
        if self.pubsub_endpoint:
            return self.pubsub_endpoint
        host = (urlparse(self.login_url).hostname or "").lower()
        return GLOBAL_PUBSUB_ENDPOINT if host.endswith((".salesforce.com", ".force.com")) else None

    @field_validator("api_version")
    @classmethod
    def _version_form(cls, value: str) -> str:
        cleaned = value.lstrip("vV")
        try:
            float(cleaned)
        except ValueError:
            raise ValueError(f"expected an API version like '59.0' (got {value!r})") from None
        return cleaned
