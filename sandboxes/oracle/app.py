"""The Oracle CRM On Demand sandbox's HTTP application: sign-in, the REST and Web Services entry points, and the
checks every API request goes through before its handler runs.

Paths are Oracle's own:
- `/OnDemand/user/Rest/Connection` (GET with `Authorization: Basic`, or `?action=logoff`) signs in and out and
  returns the connection attributes (REST API Developer's Guide, "Login with Oracle CRM On Demand REST API" and
  "REST API Connection Attributes Example", OnDemRestAPI_Start4/5/6.html);
- `/OnDemand/user/Rest/<version>/...` is the REST API, `<version>` being `latest` or 026..039 (URL format,
  OnDemRestAPI_Overview4.html);
- `/Services/Integration?command=login|logoff` (GET, `UserName`/`Password` headers, optional `isEncoded=Y`) and
  `POST /Services/Integration[/<object>][;jsessionid=...]` are Web Services (OnDemWebSvcs_EstablishSessions10/12).

Every API request is authenticated (JSESSIONID cookie, `;jsessionid=` URL parameter, Basic credentials on REST,
a WS-Security UsernameToken on Web Services), then the fault dice are rolled (no side effect when one fires),
then the per-session rate limiter counts it, then the handler runs. The admin endpoints (admin.py) sit outside.
A new session's id goes back as `Set-Cookie: JSESSIONID=...` and, on REST, also as a `JSESSIONID` header, the
"Oracle CRM On Demand response header field" of the Supported HTTP Header Fields table (sent with that casing).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from pathlib import Path
from typing import Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandboxes.control import AccessLog, Faults

from . import admin, rest, webservices
from .context import FAULT_KINDS, Sandbox, Stats, json_response
from .errors import (HELP_URL, NOT_FOUND, NOT_SIGNED_IN, REQUEST_SIZE, REST_RATE, SERVER, SESSION_GONE,
                     SESSION_INVALID, WS_RATE, OracleError)
from .model import USER
from .sessions import Session, Sessions
from .settings import Credentials, SandboxSettings
from .store import Store

log = logging.getLogger("crmsync.sandbox.oracle")
API_VERSION, API_VERSION_MINIMUM = "039", "026"
VERSIONS = {"latest", *(f"{v:03d}" for v in range(int(API_VERSION_MINIMUM), int(API_VERSION) + 1))}
REST_METHODS = ["GET", "POST", "PATCH", "DELETE", "PUT"]


def create_sandbox(state_dir: Path, credentials: Credentials, zone_name: str, admin_token: str) -> Sandbox:
    """Open (or create) the company stored in `state_dir` and wire up everything the handlers share."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    zone = ZoneInfo(zone_name)
    settings = SandboxSettings.load(state_dir)
    store = Store(state_dir)
    user_id = store.ensure_users(credentials.username, zone.key, time_zone_label(zone, store))
    if store.meta("tenant_id") is None:
        store.set_meta("tenant_id", store.next_ids()[0])
    store.purge_deleted(settings.deleted_item_retention_days)
    sessions = Sessions(credentials, settings, user_id, store.now)
    return Sandbox(store=store, settings=settings, credentials=credentials, sessions=sessions, zone=zone,
                   user_id=user_id, admin_token=admin_token, faults=Faults(FAULT_KINDS), stats=Stats())


def time_zone_label(zone: ZoneInfo, store: Store) -> str:
    """How the User record shows the time zone, e.g. '(GMT-08:00) America/Los_Angeles' (offset of today)."""
    offset = store.now().astimezone(zone).utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "+" if minutes >= 0 else "-"
    return f"(GMT{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}) {zone.key}"


# ---------------------------------------------------------------- REST


async def rest_connection(request: Request) -> Response:
    """Sign in (Basic credentials) or out (`?action=logoff`); both answer with the connection attributes."""
    sandbox: Sandbox = request.app.state.sandbox
    try:
        if request.query_params.get("action", "").lower() == "logoff":
            if not sandbox.sessions.log_off(_session_id(request)):
                raise OracleError(SESSION_INVALID)
            return Response(status_code=200)
        new_id, previous, basic = None, None, _basic(request)
        if basic is not None:
            new_id = sandbox.sessions.sign_in(*basic, kind="rest")
            previous = sandbox.store.signed_in(sandbox.user_id)
        elif _session_id(request):
            sandbox.sessions.lookup(_session_id(request))
        else:
            raise OracleError(NOT_SIGNED_IN)
        response = json_response({"Connection": _connection_attributes(sandbox, previous)})
        return _with_session(response, new_id, rest_header=True)
    except OracleError as exc:
        sandbox.stats.errors[exc.code] += 1
        return json_response(exc.rest_body(request.url.path), status=exc.status)


def _connection_attributes(sandbox: Sandbox, last_logged_in: str | None) -> dict[str, Any]:
    dialect, user = sandbox.dialect("rest"), sandbox.store.get(USER, sandbox.user_id) or {}
    return {
        "apiVersion": API_VERSION, "apiVersionMinimum": API_VERSION_MINIMUM, "clientHelpURL": HELP_URL,
        "dateFormatLocale": "yyyy-MM-dd, yyyy-MM-dd'T'HH:mm:ss'Z'", "languageLocale": "ENU", "maximumFileSize": 20,
        "Version": f"{API_VERSION}.000.000", "ServerDate": dialect.format_datetime(sandbox.store.stamp()),
        "ITSUrlforSSO": "", "LastLoggedIn": dialect.format_datetime(last_logged_in) if last_logged_in else "",
        "UserLoginId": user.get("UserLoginId", ""), "UserId": sandbox.user_id,
        "TenantId": sandbox.store.meta("tenant_id"), "CompanyName": sandbox.settings.company_name,
    }


async def rest_entry(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    version, path = request.path_params["version"], "/" + request.path_params.get("rest", "")
    body = await request.body()
    new_id = None
    try:
        if version not in VERSIONS:
            raise OracleError(NOT_FOUND, request.url.path)
        session, new_id = _rest_session(request)
        sandbox.stats.requests[f"REST {request.method} {path.strip('/').split('/')[0] or '/'}"] += 1
        fault = await _roll_faults(sandbox, session, ws=False)
        if fault is not None:
            raise fault
        sandbox.sessions.count_rest(session)
        call = rest.RestCall(sandbox=sandbox, method=request.method, path=path, version=version,
                             query=dict(request.query_params), headers={k.lower(): v for k, v in request.headers
                                                                        .items()},
                             body=body, host_url=f"{request.url.scheme}://{request.url.netloc}",
                             user_id=session.user_id)
        response = rest.dispatch(call)
    except OracleError as exc:
        sandbox.stats.errors[exc.code] += 1
        response = json_response(exc.rest_body(request.url.path), status=exc.status)
    except Exception:  # a sandbox bug: answer like Oracle's unexpected errors, log the details
        log.exception("unhandled error in REST %s %s", request.method, request.url.path)
        error = OracleError(SERVER)
        response = json_response(error.rest_body(request.url.path), status=500)
    return _with_session(response, new_id, rest_header=True)


def _rest_session(request: Request) -> tuple[Session, str | None]:
    """The caller's session: its JSESSIONID, or a new one from Basic credentials; 403 when neither is sent."""
    sessions = request.app.state.sandbox.sessions
    session_id = _session_id(request)
    if session_id:
        return sessions.lookup(session_id), None
    basic = _basic(request)
    if basic is None:
        raise OracleError(NOT_SIGNED_IN)
    new_id = sessions.sign_in(*basic, kind="rest")
    return sessions.lookup(new_id), new_id


# ---------------------------------------------------------------- Web Services


async def ws_entry(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    if request.method == "GET":
        return _ws_command(request, sandbox)
    body = await request.body()
    new_id = None
    try:
        if len(body) > sandbox.settings.request_size_kb * 1024:
            raise OracleError(REQUEST_SIZE, sandbox.settings.request_size_kb)
        envelope = webservices.parse_envelope(body)
        session, new_id = _ws_session(request, envelope)
        sandbox.stats.requests[f"WS {webservices.operation_name(envelope.body)}"] += 1
        fault = await _roll_faults(sandbox, session, ws=True)
        if fault is not None:
            raise fault
        sandbox.sessions.count_ws(session)
        response = webservices.dispatch(webservices.WsCall(sandbox, session.user_id, envelope.body))
    except OracleError as exc:
        sandbox.stats.errors[exc.code] += 1
        response = webservices.fault_response(exc)
    except Exception:
        log.exception("unhandled error in Web Services request")
        response = webservices.fault_response(OracleError(SERVER))
    return _with_session(response, new_id, rest_header=False)


def _ws_command(request: Request, sandbox: Sandbox) -> Response:
    """`?command=login` (UserName/Password headers) and `?command=logoff`; the value is case-sensitive."""
    command = request.query_params.get("command", "")
    try:
        if command == "login":
            encoded = request.query_params.get("isEncoded", "N").upper() == "Y"
            username, password = request.headers.get("username", ""), request.headers.get("password", "")
            if encoded:
                username, password = unquote(username), unquote(password)
            new_id = sandbox.sessions.sign_in(username, password, kind="ws")
            sandbox.store.signed_in(sandbox.user_id)
            return _with_session(Response(status_code=200), new_id, rest_header=False)
        if command == "logoff":
            if not sandbox.sessions.log_off(_session_id(request)):
                raise OracleError(SESSION_GONE)
            return Response(status_code=200)
        raise OracleError(NOT_FOUND, f"/Services/Integration?command={command}")
    except OracleError as exc:
        sandbox.stats.errors[exc.code] += 1
        return Response(exc.detail, status_code=exc.status if exc.status != 500 else 401, media_type="text/plain")


def _ws_session(request: Request, envelope: webservices.Envelope) -> tuple[Session, str | None]:
    sessions = request.app.state.sandbox.sessions
    token = webservices.username_token(envelope.header)
    if token is not None:
        username, password, stateless = token
        if stateless:
            return sessions.stateless(username, password), None
        new_id = sessions.sign_in(username, password, kind="ws")
        return sessions.lookup(new_id, ws=True), new_id
    return sessions.lookup(_session_id(request), ws=True), None


# ---------------------------------------------------------------- shared checks


async def _roll_faults(sandbox: Sandbox, session: Session, *, ws: bool) -> OracleError | None:
    """Injected failures (admin.py); the error to answer with, or None."""
    decision = sandbox.faults.decide()
    if decision.delay:
        await asyncio.sleep(decision.delay)
    if decision.kind is None:
        return None
    sandbox.stats.faults[decision.kind] += 1
    if decision.kind == "session_expiry":
        sandbox.sessions.expire(session)
        return OracleError(SESSION_GONE if ws else SESSION_INVALID)
    if decision.kind == "rate_limited":
        settings = sandbox.settings
        return OracleError(WS_RATE, settings.ws_min_interval_ms or 50) if ws else \
            OracleError(REST_RATE, settings.rest_requests_per_window, status=settings.rest_rate_limit_status)
    return OracleError(SERVER)


def _session_id(request: Request) -> str:
    """JSESSIONID from the cookie or from a `;jsessionid=` path parameter."""
    from_cookie = request.cookies.get("JSESSIONID", "")
    if from_cookie:
        return from_cookie
    _, _, parameter = request.url.path.partition(";")
    name, _, value = parameter.partition("=")
    return value.strip() if name.strip().lower() == "jsessionid" else ""


def _basic(request: Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, _, password = base64.b64decode(encoded.strip()).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    return username, password


def _with_session(response: Response, session_id: str | None, *, rest_header: bool) -> Response:
    if session_id:
        response.set_cookie("JSESSIONID", session_id, path="/", secure=True, httponly=True)
        if rest_header:
            response.raw_headers.append((b"JSESSIONID", session_id.encode()))
    return response


# ---------------------------------------------------------------- application


def build_app(sandbox: Sandbox) -> Any:
    routes = [
        Route("/OnDemand/user/Rest/Connection", rest_connection, methods=["GET", "POST"]),
        Route("/OnDemand/user/Rest/{version}", rest_entry, methods=REST_METHODS),
        Route("/OnDemand/user/Rest/{version}/{rest:path}", rest_entry, methods=REST_METHODS),
        Route("/Services/Integration{rest:path}", ws_entry, methods=["GET", "POST"]),
        *[Route(path, endpoint, methods=verbs) for path, verbs, endpoint in admin.ENDPOINTS],
    ]
    app = Starlette(routes=routes)
    app.state.sandbox = sandbox
    return AccessLog(app, log)
