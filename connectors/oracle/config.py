"""Configuration of the Oracle CRM On Demand client: where, who, which time zone, how fast (a pydantic model).

`user_timezone` is the time zone of the OOD user the client signs in as: the REST API writes and reads datetimes
as that user's wall-clock time (connectors/oracle/timezone.py). OOD does not expose it in an IANA form, so it is
configuration; `OracleClient.check_timezone()` compares it with the offset the server's ServerDate reveals.
Limits default to Oracle's documented ones: 30 REST requests per minute per session, 50 ms between Web Services
requests, 20 records per Web Services write, 100 records per page.
"""
from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class OracleConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = Field(description="https://<host>[:port] of the OOD pod (or the sandbox)")
    username: str = Field(min_length=1, description="sign-in id, e.g. COMPANY/USER")
    password: SecretStr
    ca_file: Path | None = Field(None, description="PEM file of the CA to trust (the sandbox CA); None: system CAs")
    user_timezone: str = Field(description="IANA time zone of the OOD user, e.g. America/Los_Angeles")
    api_version: str = "latest"
    rest_requests_per_window: int = Field(30, ge=1)
    rest_window_seconds: float = Field(60.0, gt=0)
    ws_min_interval_seconds: float = Field(0.05, ge=0)
    ws_batch_size: int = Field(20, ge=1, le=20)
    page_size: int = Field(100, ge=1, le=100)
    timeout_seconds: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)
    ws_stateless: bool = Field(True, description="Web Services requests carry a WS-Security UsernameToken and share "
                               "the user's one stateless session (OOD allows 10 concurrent sessions per company); "
                               "false: a stateful Web Services session of its own per client")

    @field_validator("base_url")
    @classmethod
    def _https_only(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError(f"base_url must start with https:// (OOD and its sandbox speak HTTPS only), got "
                             f"{value!r}")
        return value.rstrip("/")

    @field_validator("user_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone name such as America/Los_Angeles") from None
        return value

    @field_validator("ca_file")
    @classmethod
    def _readable_ca(cls, value: Path | None) -> Path | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"ca_file {value} does not exist; for the sandbox run `crmsync sandbox ca`")
        return value

    @field_validator("api_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if value != "latest" and not (value.isdigit() and len(value) == 3):
            raise ValueError(f"api_version is 'latest' or three digits such as '028', not {value!r}")
        return value
