"""Signing in to Oracle CRM On Demand and keeping the session: REST and Web Services each hold one session.

- REST: `GET /OnDemand/user/Rest/Connection` with `Authorization: Basic base64(user:password)` returns the
  connection attributes and the session id in the `JSESSIONID` header and cookie; `?action=logoff` ends it
  (REST API Developer's Guide, OnDemRestAPI_Start4/5/6.html).
- Web Services: `GET /Services/Integration?command=login` with `UserName` and `Password` headers (URL-encoded with
  `isEncoded=Y`, so any character works) returns the JSESSIONID cookie; `?command=logoff` ends it
  (Web Services On Demand Guide, OnDemWebSvcs_EstablishSessions10.html).

A session is signed in lazily, before the first request, and again whenever a request finds it gone; each
sign-in restarts the session's pacer because OOD counts requests per session from zero.

Sessions are scarce: OOD allows 10 concurrent sessions per company ("Web Services On Demand Limiters",
OnDemWebSvcs_Limiters2.html), and one that is not logged off lives until 10 minutes of inactivity. So Web
Services requests are stateless by default (`ws_stateless`): each carries a WS-Security UsernameToken and every
process of the user shares the user's one stateless session (OnDemWebSvcs_EstablishSessions4.html) instead of
holding one each; a process holds only its REST session. A sign-in refused for the quota (SBL-ODU-01004) raises
`SessionQuotaReached`, a transient error: the caller retries later. The session id is sent
as a `Cookie: JSESSIONID=...` header, never in a URL, and is added to the error scrubber.
"""
from __future__ import annotations

import base64
import re
from typing import Any, Callable
from urllib.parse import quote

import httpx

from .config import OracleConfig
from .errors import SESSION_QUOTA, OracleApiError, Scrubber, SessionQuotaReached, SignInFailed, TransportError
from .pacer import Pacer


class Session:
    """One signed-in session (REST or Web Services) and the pacer that keeps it within OOD's limits."""

    def __init__(self, http: httpx.Client, config: OracleConfig, scrub: Scrubber, pacer: Pacer,
                 sign_in: Callable[["Session"], str]) -> None:
        self.http, self.config, self.scrub, self.pacer = http, config, scrub, pacer
        self._sign_in = sign_in
        self.session_id: str | None = None
        self.sign_ins = 0
        self.connection: dict[str, Any] = {}

    def cookie(self) -> dict[str, str]:
        """The session header for the next request, signing in first when there is no session."""
        if self.session_id is None:
            self.session_id = self._sign_in(self)
            self.scrub.add(self.session_id)
            self.sign_ins += 1
            self.pacer.restart()
        return {"Cookie": f"JSESSIONID={self.session_id}"}

    def forget(self) -> None:
        """The server said the session is gone; the next request signs in again."""
        self.session_id = None

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.get(url, **kwargs)
        except httpx.HTTPError as exc:
            raise TransportError(self.scrub(f"{type(exc).__name__}: {exc}"), transient=True) from None


def rest_sign_in(session: Session) -> str:
    config = session.config
    password = config.password.get_secret_value()
    basic = base64.b64encode(f"{config.username}:{password}".encode()).decode()
    response = session.get(f"{config.base_url}/OnDemand/user/Rest/Connection",
                           headers={"Authorization": f"Basic {basic}"})
    if response.status_code != 200:
        raise _sign_in_error(session, response)
    session_id = response.headers.get("JSESSIONID") or response.cookies.get("JSESSIONID")
    if not session_id:
        raise OracleApiError("the sign-in answered 200 without a JSESSIONID", status=200)
    session.connection = response.json().get("Connection", {})
    return session_id


def ws_sign_in(session: Session) -> str:
    config = session.config
    response = session.get(f"{config.base_url}/Services/Integration", params={"command": "login",
                                                                              "isEncoded": "Y"},
                           headers={"UserName": quote(config.username, safe=""),
                                    "Password": quote(config.password.get_secret_value(), safe="")})
    if response.status_code != 200:
        raise _sign_in_error(session, response)
    session_id = response.cookies.get("JSESSIONID")
    if not session_id:
        raise OracleApiError("the Web Services login answered 200 without a JSESSIONID cookie", status=200)
    return session_id


def log_off(session: Session, url: str, params: dict[str, str]) -> None:
    """End the session if there is one; failures are ignored (the server times sessions out anyway)."""
    if session.session_id is None:
        return
    try:
        session.http.get(url, params=params, headers={"Cookie": f"JSESSIONID={session.session_id}"})
    except httpx.HTTPError:
        pass
    session.session_id = None


def _sign_in_error(session: Session, response: httpx.Response) -> OracleApiError:
    try:
        error = response.json()["Error"][0]
        message, code = str(error.get("detail", "")), str(error.get("errorCode", ""))
    except (ValueError, KeyError, IndexError, TypeError):
        message = response.text.strip()[:300]
        found = re.search(r"\((SBL-[A-Z]+-\d+)\)", message)
        code = found.group(1) if found else ""
    if code == SESSION_QUOTA:
        return SessionQuotaReached(session.scrub(f"signing in as {session.config.username} failed: {message}"),
                                   status=response.status_code, code=code, transient=True)
    kind = SignInFailed if response.status_code in (401, 403) else OracleApiError
    return kind(session.scrub(f"signing in as {session.config.username} failed: {message}"),
                status=response.status_code, code=code)
