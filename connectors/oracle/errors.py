"""Errors the Oracle CRM On Demand client raises, and the scrubbing that keeps secrets out of them.

Every error carries what OOD said (HTTP status, `SBL-...` code, message) so callers can decide: retry
(`retryable`), sign in again (`SessionExpired`), slow down (`RateLimited`) or reject the record (data errors,
with the Siebel error symbol and log file name Web Services faults carry). Messages are built from server answers,
which never echo credentials, and are scrubbed once more of every secret the client knows (password, Basic
header, session ids) before they are raised.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Iterable

REST_RATE_TEXT = "The maximum rate of requests was exceeded"
BAD_CREDENTIALS = "SBL-ODU-01003"  # the user name or password is not valid
SESSION_QUOTA = "SBL-ODU-01004"  # the company's concurrent sessions are all in use


@dataclass(eq=False)
class OracleApiError(Exception):
    message: str
    status: int = 0
    code: str = ""  # SBL-XXX-nnnnn
    symbol: str = ""  # Siebel error symbol (Web Services data errors)
    log_file: str = ""  # Oracle-side log file name (Web Services data errors)
    transient: bool = False  # a server-side or transport failure: the same request may succeed later

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status else "OOD"
        return f"{where} {self.code}: {self.message}" if self.code else f"{where}: {self.message}"

    @property
    def retryable(self) -> bool:
        return self.transient


class SessionExpired(OracleApiError):
    """The session is gone (timed out, logged off, server restarted): sign in again and retry."""


class RateLimited(OracleApiError):
    """OOD refused the request for the session's request rate."""

    retry_after: float | None = None  # seconds, when OOD said how long ("Please try again in N ms")


class SignInFailed(OracleApiError):
    """The credentials were refused: a configuration error, not worth retrying."""


class SessionQuotaReached(OracleApiError):
    """SBL-ODU-01004: the company's concurrent sessions (10 by default) are all in use. Transient: a session ends
    when its holder logs off or after 10 minutes idle (a process killed without logging off holds one until
    then)."""


class TransportError(OracleApiError):
    """The request did not complete (connection refused, TLS failure, timeout); raised with transient=True."""


class Scrubber:
    """Replaces known secrets in text with '***'."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 4:
            self._secrets.add(secret)

    def add_credentials(self, username: str, password: str) -> None:
        self.add(password)
        self.add(base64.b64encode(f"{username}:{password}".encode()).decode())

    def __call__(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text
