"""A Salesforce account in crmsync.yaml or the account store: where to log in and with what.

`login_url` is https only (login.salesforce.com, test.salesforce.com with `sandbox: true`, a My Domain, or the
local sandbox); secrets are SecretStr, never printed. `auth: oauth` uses the OAuth 2.0 password flow with the
connected app's client id and secret, `soap` the partner API's login.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from crmsync.connectors import AccountBase, https_url


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

    _check_url = field_validator("login_url")(classmethod(lambda cls, v: https_url(v)))

    @field_validator("api_version")
    @classmethod
    def _version_form(cls, value: str) -> str:
        cleaned = value.lstrip("vV")
        try:
            float(cleaned)
        except ValueError:
            raise ValueError(f"expected an API version like '59.0' (got {value!r})") from None
        return cleaned
