"""Who may read the dashboard: holders of its access token, under host names it knows.

Why: the dashboard shows consumer groups, record journeys and reject reasons, which can carry personal data.
It listens on loopback by default, but without a gate any local process could read it, and so could any web
page the user's browser opens, through DNS rebinding (a page whose host name re-resolves to 127.0.0.1).

- The token: `$CRMSYNC_DASHBOARD_TOKEN`, else `<state>/secrets/dashboard.token` (generated once, mode 0600).
  `crmsync run`, `crmsync dashboard` and `crmsync demo` print the link that carries it, once.
- A request gets in with `Authorization: Bearer <token>`, or with the session cookie that opening
  `/?token=<token>` sets: the answer is a redirect to the same address without the token (it leaves the
  address bar and the history) and an HttpOnly, SameSite=Strict cookie holding a random session id, never the
  token. Sessions live in this process: a restarted dashboard wants the link again.
- `/healthz`, `/readyz` and `/metrics` answer without the token: probes and Prometheus call them, and they
  carry no record data.
- The Host header must be localhost, 127.0.0.1, [::1] or a configured name (Starlette's
  TrustedHostMiddleware); anything else is answered 400.
"""
from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from crmsync import private

TOKEN_ENV = "CRMSYNC_DASHBOARD_TOKEN"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
SESSION_COOKIE = "crmsync_dashboard_session"
HOW_TO_GET_IN = ("this dashboard needs its access token: open the link that `crmsync run` / `crmsync dashboard` "
                 "printed (…/?token=…), or send `Authorization: Bearer <token>`; the token is in the state "
                 "directory's secrets/dashboard.token")


def token_file(state_dir: Path) -> Path:
    return Path(state_dir) / "secrets" / "dashboard.token"


def access_token(state_dir: Path) -> str:
    """The token: from the environment (containers share it through the env file), else the state dir's."""
    return os.environ.get(TOKEN_ENV) or private.generated_secret(token_file(state_dir))


def allowed_hosts(bound_host: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Host names the dashboard answers to: loopback, the address it listens on (unless a wildcard), `extra`."""
    named = [] if bound_host in ("0.0.0.0", "::", "") else [f"[{bound_host}]" if ":" in bound_host else bound_host]
    return list(dict.fromkeys([*LOCAL_HOSTS, *named, *(h.strip() for h in extra if h.strip())]))


class TokenGate:
    """ASGI middleware: lets a request through only with the token (bearer) or a session it issued."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token
        self.sessions: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        offered = request.query_params.get("token")
        if offered is not None:
            response = self._exchange(request, offered)
        elif self._allowed(request):
            await self.app(scope, receive, send)
            return
        else:
            response = self._refusal(request)
        await response(scope, receive, send)

    def _allowed(self, request: Request) -> bool:
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), self.token.encode()):
            return True
        return request.cookies.get(SESSION_COOKIE, "") in self.sessions

    def _exchange(self, request: Request, offered: str) -> Response:
        """The one-time link: a good token becomes a session cookie, and the address loses the token."""
        if not hmac.compare_digest(offered.encode(), self.token.encode()):
            return self._refusal(request)
        session = secrets.token_urlsafe(32)
        self.sessions.add(session)
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        response = RedirectResponse(request.url.path + (f"?{urlencode(rest)}" if rest else ""), status_code=303)
        response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict", path="/")
        return response

    @staticmethod
    def _refusal(request: Request) -> Response:
        headers = {"WWW-Authenticate": 'Bearer realm="crmsync dashboard"'}
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": HOW_TO_GET_IN}, status_code=401, headers=headers)
        return PlainTextResponse(HOW_TO_GET_IN, status_code=401, headers=headers)
