"""Sessions and the per-session limiters: sign-in, JSESSIONID lookup, inactivity timeout, the company's session
quota, the REST rate limit (fixed windows) and the Web Services request rate.

Sources: REST sign-in with Basic credentials on `/OnDemand/user/Rest/Connection` returning JSESSIONID
(OnDemRestAPI_Start4.html), logoff with `?action=logoff` (Start6); Web Services stateful login
`/Services/Integration?command=login` with UserName/Password headers and stateless requests carrying a WS-Security
UsernameToken, which reuse the user's existing stateless session (OnDemWebSvcs_EstablishSessions4/10.html);
"REST API Request Rate Limits" (OnDemRestAPI_Overview18.html): 30 requests a minute per session, counted from
zero when a session starts, reset at the end of each one-minute period, not a rolling window; "Web Services On
Demand Limiters" (OnDemWebSvcs_Limiters2/3.html): 10 concurrent sessions per company, 20 requests a second
measured as at least 50 ms between requests, 600 s of inactivity.

Choices where the guides are silent (docs/oracle.md): one session table serves REST and Web Services (a
JSESSIONID from either sign-in works on both APIs); sessions live in memory, so a restart signs everybody out;
a request refused by a limiter is not counted; all timing uses the sandbox clock, so moving the clock forward
expires idle sessions exactly as waiting would.

Session ids are random; only their SHA-256 is kept, and they are never logged.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from .errors import REST_RATE, SESSION_GONE, SESSION_INVALID, SESSION_QUOTA, SIGN_IN_FAILED, WS_RATE, OracleError
from .settings import Credentials, SandboxSettings


@dataclass
class Session:
    digest: str
    user_id: str
    kind: str  # rest | ws | stateless
    created: float  # sandbox-clock timestamps (seconds)
    last_used: float
    window_index: int = -1
    window_count: int = 0
    last_ws_request: float | None = None
    requests: int = 0


@dataclass(frozen=True)
class Budget:
    """What a REST session has used of its current rate window (for admin stats)."""
    used: int
    limit: int
    resets_in: float


class Sessions:
    def __init__(self, credentials: Credentials, settings: SandboxSettings, user_id: str,
                 clock: Callable[[], datetime]) -> None:
        self.credentials, self.settings, self.user_id, self.clock = credentials, settings, user_id, clock
        self._sessions: dict[str, Session] = {}
        self.created = 0
        self.rate_limited = 0

    # ---------------------------------------------------------------- sign-in

    def credentials_ok(self, username: str, password: str) -> bool:
        """Constant-time check; user names are case-insensitive, as OOD sign-in ids are."""
        same_user = hmac.compare_digest(username.upper().encode(), self.credentials.username.upper().encode())
        same_password = hmac.compare_digest(password.encode(), self.credentials.password.encode())
        return same_user and same_password

    def sign_in(self, username: str, password: str, kind: str) -> str:
        """Check credentials and open a session; returns the new JSESSIONID."""
        if not self.credentials_ok(username, password):
            raise OracleError(SIGN_IN_FAILED)
        self._expire_idle()
        if len(self._sessions) >= self.settings.max_sessions:
            raise OracleError(SESSION_QUOTA, self.settings.max_sessions)
        session_id = secrets.token_hex(32).upper()
        now = self._now()
        self._sessions[_digest(session_id)] = Session(_digest(session_id), self.user_id, kind, now, now)
        self.created += 1
        return session_id

    def stateless(self, username: str, password: str) -> Session:
        """The user's stateless Web Services session: reused while alive, opened when missing."""
        if not self.credentials_ok(username, password):
            raise OracleError(SIGN_IN_FAILED)
        self._expire_idle()
        for session in self._sessions.values():
            if session.kind == "stateless" and session.user_id == self.user_id:
                return session
        session_id = self.sign_in(username, password, "stateless")
        return self._sessions[_digest(session_id)]

    def log_off(self, session_id: str) -> bool:
        return self._sessions.pop(_digest(session_id), None) is not None

    def expire_all(self) -> int:
        count = len(self._sessions)
        self._sessions.clear()
        return count

    # ---------------------------------------------------------------- per request

    def lookup(self, session_id: str, *, ws: bool = False) -> Session:
        """The live session for a JSESSIONID; raises the REST (401) or Web Services error otherwise."""
        session = self._sessions.get(_digest(session_id)) if session_id else None
        now = self._now()
        if session is not None and now - session.last_used > self.settings.session_inactivity_seconds:
            self._sessions.pop(session.digest, None)
            session = None
        if session is None:
            raise OracleError(SESSION_GONE if ws else SESSION_INVALID)
        return session

    def expire(self, session: Session) -> None:
        self._sessions.pop(session.digest, None)

    def count_rest(self, session: Session) -> None:
        """Count a REST request in the session's fixed window or raise the documented rate-limit error."""
        index, _ = self._window(session)
        if index != session.window_index:
            session.window_index, session.window_count = index, 0
        if session.window_count >= self.settings.rest_requests_per_window:
            self.rate_limited += 1
            raise OracleError(REST_RATE, self.settings.rest_requests_per_window,
                              status=self.settings.rest_rate_limit_status)
        session.window_count += 1
        self._touch(session, self._now())

    def count_ws(self, session: Session) -> None:
        """Refuse a Web Services request sent sooner than `ws_min_interval_ms` after the previous one."""
        now, interval = self._now(), self.settings.ws_min_interval_ms / 1000
        since = now - session.last_ws_request if session.last_ws_request is not None else None
        if since is not None and 0 <= since < interval:  # a clock set back (admin) is no reason to refuse
            self.rate_limited += 1
            raise OracleError(WS_RATE, max(1, round((interval - since) * 1000)))
        session.last_ws_request = now
        self._touch(session, now)

    def budget(self, session: Session) -> Budget:
        index, elapsed = self._window(session)
        used = session.window_count if index == session.window_index else 0
        limit, length = self.settings.rest_requests_per_window, self.settings.rest_window_seconds
        return Budget(used, limit, length - elapsed)

    def live(self) -> list[Session]:
        self._expire_idle()
        return list(self._sessions.values())

    # ---------------------------------------------------------------- helpers

    def _window(self, session: Session) -> tuple[int, float]:
        """(index of the current rate window, seconds into it): windows start with the session, or on
        wall-clock multiples of the window length with `rest_window_alignment: clock`."""
        length = self.settings.rest_window_seconds
        if not length:
            return 0, 0.0
        origin = session.created if self.settings.rest_window_alignment == "session" else 0.0
        index, into = divmod(self._now() - origin, length)
        return int(index), into

    def _touch(self, session: Session, now: float) -> None:
        session.last_used = now
        session.requests += 1

    def _expire_idle(self) -> None:
        now = self._now()
        for digest, session in list(self._sessions.items()):
            if now - session.last_used > self.settings.session_inactivity_seconds:
                del self._sessions[digest]

    def _now(self) -> float:
        return self.clock().timestamp()


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()
