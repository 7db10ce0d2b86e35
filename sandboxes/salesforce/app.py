"""The Salesforce sandbox's HTTP application: routing, authentication, limits and faults around the handlers.

Paths are Salesforce's own. Login lives at /services/oauth2/token, /services/oauth2/revoke and
/services/Soap/u/{version}, also under any `<prefix>.salesforce.com/` path prefix, because simple-salesforce
builds login URLs as `https://{domain}.salesforce.com/...` (domain="127.0.0.1:8443/sf" reaches
`/sf.salesforce.com/services/oauth2/token` here). The data API is /services/data/vXX.X/..., with or without a
trailing slash.

Every data API request goes through `api_entry`: check the session (401 INVALID_SESSION_ID), roll the fault
dice (no side effect when one fires), enforce and count the daily request limit (403 REQUEST_LIMIT_EXCEEDED),
then `dispatch` to a handler from `API_ROUTES`, inside one change-event transaction (cdc.py) whose changeOrigin
is `com/salesforce/api/rest/<version>` (`bulkapi` for Bulk API jobs) plus `;client=<id>` when the request sends
`Sforce-Call-Options: client=<id>`. Responses carry `Sforce-Limit-Info: api-usage=N/M`. All store work runs on
the store thread (context.py), never on the event loop.
The /__sandbox/* admin endpoints (admin.py) sit outside all of this and use their own header.
"""
from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandboxes.control import AccessLog

from . import admin, bulk, bulk1, cometd, composite, rest, tooling
from .auth import Auth, oauth_revoke, oauth_token, soap_login
from .cdc import DEFAULT_RETENTION_SECONDS, ChangeLog
from .context import Call, Sandbox, StoreThread, error_response, json_response
from .wire import SalesforceHeaders
from .errors import SalesforceError, not_found
from .objects import MODEL
from .settings import Credentials, SandboxSettings
from .store import Store

log = logging.getLogger("crmsync.sandbox.salesforce")
VERSIONS = [f"{v}.0" for v in range(31, 67)]
MAX_BODY = 150 * 1024 * 1024  # Bulk API 2.0 accepts up to 150 MB of CSV per job
_SEASONS = ("Winter", "Spring", "Summer")

API_ROUTES: list[tuple[str, str, Callable[[Call], Response]]] = [
    ("GET", "/", rest.resources),
    ("GET", "/limits", rest.limits),
    ("GET", "/sobjects", rest.sobjects),
    ("GET", "/sobjects/{sobject}", rest.sobject_info),
    ("POST", "/sobjects/{sobject}", rest.record_create),
    ("GET", "/sobjects/{sobject}/describe", rest.sobject_describe),
    ("GET", "/sobjects/{sobject}/updated", rest.updated),
    ("GET", "/sobjects/{sobject}/deleted", rest.deleted),
    ("GET", "/sobjects/{sobject}/{record_id}", rest.record_get),
    ("PATCH", "/sobjects/{sobject}/{record_id}", rest.record_update),
    ("DELETE", "/sobjects/{sobject}/{record_id}", rest.record_delete),
    ("GET", "/sobjects/{sobject}/{field}/{value:path}", rest.ext_get),
    ("PATCH", "/sobjects/{sobject}/{field}/{value:path}", rest.ext_upsert),
    ("DELETE", "/sobjects/{sobject}/{field}/{value:path}", rest.ext_delete),
    ("GET", "/query", rest.query),
    ("GET", "/queryAll", rest.query_all),
    ("GET", "/query/{cursor}", rest.query_more),
    ("GET", "/queryAll/{cursor}", rest.query_more),
    ("POST", "/composite/sobjects", composite.collections_create),
    ("PATCH", "/composite/sobjects", composite.collections_update),
    ("DELETE", "/composite/sobjects", composite.collections_delete),
    ("POST", "/composite/sobjects/{sobject}", composite.collections_retrieve),
    ("PATCH", "/composite/sobjects/{sobject}/{field}", composite.collections_upsert),
    ("POST", "/composite/batch", composite.batch),
    ("POST", "/jobs/ingest", bulk.create_ingest),
    ("GET", "/jobs/ingest", bulk.list_ingest),
    ("GET", "/jobs/ingest/{job_id}", bulk.get_ingest),
    ("PATCH", "/jobs/ingest/{job_id}", bulk.patch_ingest),
    ("DELETE", "/jobs/ingest/{job_id}", bulk.delete_ingest),
    ("PUT", "/jobs/ingest/{job_id}/batches", bulk.upload_ingest),
    ("GET", "/jobs/ingest/{job_id}/{kind}", bulk.ingest_results),
    ("POST", "/jobs/query", bulk.create_query),
    ("GET", "/jobs/query", bulk.list_query),
    ("GET", "/jobs/query/{job_id}", bulk.get_query),
    ("PATCH", "/jobs/query/{job_id}", bulk.patch_query),
    ("DELETE", "/jobs/query/{job_id}", bulk.delete_query),
    ("GET", "/jobs/query/{job_id}/results", bulk.query_results),
    ("GET", "/tooling/query", tooling.query),
]


def _compile(pattern: str) -> re.Pattern[str]:
    regex = re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)", pattern)
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex) + "$")


_COMPILED = [(method, _compile(pattern), handler) for method, pattern, handler in API_ROUTES]


def create_sandbox(state_dir: Path, credentials: Credentials, admin_token: str, *,
                   cdc_objects: list[str] | None = None,
                   cdc_retention_seconds: int = DEFAULT_RETENTION_SECONDS) -> Sandbox:
    """Open (or create) the org stored in `state_dir` and wire up everything the handlers share.
    `cdc_objects` replaces the stored CDC selection when given."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    settings = SandboxSettings.load(state_dir)
    for spec in settings.custom_fields:
        admin.apply_custom_field(MODEL, spec)
    store = Store(state_dir, MODEL, settings)
    org_id, user_id = store.ensure_org(credentials.username)
    store.purge_recycle_bin()
    changes = ChangeLog(store, MODEL, retention_seconds=cdc_retention_seconds, objects=cdc_objects)
    changes.default_user = user_id
    changes.purge()
    store.changes = changes
    sandbox = Sandbox(model=MODEL, store=store, settings=settings, credentials=credentials, admin_token=admin_token,
                      org_id=org_id, api_user_id=user_id, auth=Auth(store, settings, credentials, org_id, user_id),
                      faults=admin.new_faults(), stats=admin.Stats(), cursors=rest.QueryCursors(), jobs=bulk.BulkJobs(),
                      bulk1=bulk1.Bulk1Jobs(), changes=changes, worker=StoreThread(), dispatch=dispatch)
    return sandbox


def dispatch(call: Call) -> Response:
    """Route an API call (also each composite/batch sub-request) to its handler and render its errors."""
    path = call.path.rstrip("/") or "/"
    method_mismatch = False
    for method, regex, handler in _COMPILED:
        match = regex.match(path)
        if match is None:
            continue
        if method != call.method:
            method_mismatch = True
            continue
        call.params = match.groupdict()
        call.sandbox.stats.record_request(call.method, handler.__name__)
        try:
            return handler(call)
        except SalesforceError as exc:
            return error_response(exc)
        except Exception:  # a sandbox bug: answer like Salesforce's own unexpected errors
            log.exception("unhandled error in %s %s", call.method, path)
            return json_response([{"message": "An unexpected error occurred in the crmsync sandbox.",
                                   "errorCode": "UNKNOWN_EXCEPTION"}], status=500)
    call.sandbox.stats.record_request(call.method, "unmatched")
    if method_mismatch:
        return error_response(SalesforceError("METHOD_NOT_ALLOWED", f"HTTP Method '{call.method}' not allowed.",
                                              status=405))
    return error_response(not_found())


async def api_entry(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    version = request.path_params["version"]
    if not version.startswith("v") or version[1:] not in VERSIONS:
        return error_response(not_found())
    token = _bearer(request.headers.get("authorization", ""))
    try:
        user_id = await sandbox.worker.run(sandbox.auth.check_access, token)
    except SalesforceError as exc:
        return error_response(exc)
    body = await request.body()
    decision = sandbox.faults.decide()
    if decision.delay:
        sandbox.stats.faults["slow"] += 1  # a stall before the request is carried out (past a client's timeout:
        await asyncio.sleep(decision.delay)  # its answer is lost, the write still happens)
    call = Call(sandbox=sandbox, method=request.method, path="/" + request.path_params.get("rest", ""),
                raw_path=_raw_rest(request, version), query=dict(request.query_params),
                headers={k.lower(): v for k, v in request.headers.items()}, body=body, version=version[1:],
                user_id=user_id)
    return await sandbox.worker.run(_serve_call, call, decision.kind, token)


def _serve_call(call: Call, fault: str | None, token: str) -> Response:
    """Limits, counting and the handler itself, on the store thread."""
    sandbox = call.sandbox
    store, maximum = sandbox.store, sandbox.settings.daily_api_max
    if fault:
        return _limit_info(_fault(sandbox, fault, token), store.daily("api"), maximum)
    if store.daily("api") >= maximum:
        error = SalesforceError("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", status=403)
        return _limit_info(error_response(error), store.daily("api"), maximum)
    used = store.bump_daily("api")
    store.maybe_purge()
    api = "bulkapi" if call.path.startswith("/jobs/ingest") else "rest"
    with sandbox.changes.transaction(change_origin(api, call.version, call.headers), call.user_id):
        response = sandbox.dispatch(call)
    return _limit_info(response, used, maximum)


def change_origin(api: str, version: str, headers: Mapping[str, str]) -> str:
    """changeOrigin of a change event: `com/salesforce/api/<api>/<version>[;client=<Sforce-Call-Options client>]`
    (https://developer.salesforce.com/docs/platform/apex-ref/references/apex-ref/apex-class-eventbus-
    changeeventheader.html)."""
    match = re.search(r"client\s*=\s*([^,;\s]+)", headers.get("sforce-call-options", ""))
    return f"com/salesforce/api/{api}/{version}" + (f";client={match.group(1)}" if match else "")


def _fault(sandbox: Sandbox, kind: str, token: str) -> Response:
    sandbox.stats.faults[kind] += 1
    if kind == "session_expiry":
        sandbox.auth.revoke(token)
        return error_response(SalesforceError("INVALID_SESSION_ID", "Session expired or invalid", status=401))
    if kind == "request_limit_exceeded":
        return error_response(SalesforceError("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", status=403))
    return error_response(SalesforceError("SERVER_UNAVAILABLE", "Server temporarily unavailable; retry later.",
                                          status=503))


def _limit_info(response: Response, used: int, maximum: int) -> Response:
    response.headers["Sforce-Limit-Info"] = f"api-usage={used}/{maximum}"
    return response


def _bearer(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() in ("bearer", "oauth") else ""


def _raw_rest(request: Request, version: str) -> str:
    raw = request.scope.get("raw_path", b"").decode("latin-1")
    _, _, rest = raw.partition(f"/services/data/{version}")
    return "/" + rest.strip("/")


async def versions(request: Request) -> Response:
    return json_response([{"label": _release(v), "url": f"/services/data/v{v}", "version": v} for v in VERSIONS])


def _release(version: str) -> str:
    """Salesforce's release name for an API version: v20.0 was Winter '11, three releases a year."""
    offset = int(float(version)) - 20
    return f"{_SEASONS[offset % 3]} '{11 + offset // 3:02d}"


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(status, "UNKNOWN_EXCEPTION")
    message = "The requested resource does not exist" if status == 404 else str(getattr(exc, "detail", exc))
    return json_response([{"message": message, "errorCode": code}], status=status)


def _login_routes() -> list[Route]:
    routes = []
    for prefix in ("", "/{prefix:path}.salesforce.com"):
        routes += [Route(f"{prefix}/services/oauth2/token", oauth_token, methods=["POST"]),
                   Route(f"{prefix}/services/oauth2/revoke", oauth_revoke, methods=["GET", "POST"]),
                   Route(f"{prefix}/services/Soap/u/{{version}}", soap_login, methods=["POST"]),
                   Route(f"{prefix}/services/Soap/u/{{version}}/", soap_login, methods=["POST"])]
    return routes


def build_app(sandbox: Sandbox) -> Any:
    methods = ["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD"]
    routes = [
        Route("/services/data", versions, methods=["GET"]),
        Route("/services/data/", versions, methods=["GET"]),
        Route("/services/data/{version}", api_entry, methods=methods),
        Route("/services/data/{version}/{rest:path}", api_entry, methods=methods),
        *_login_routes(),
        *bulk1.routes(),
        *cometd.routes(),
        *[Route(path, endpoint, methods=verbs) for path, verbs, endpoint in admin.ENDPOINTS],
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error}, max_body_size=MAX_BODY)
    app.router.redirect_slashes = False  # Salesforce never answers a trailing slash with a redirect
    app.state.sandbox = sandbox
    app.state.cometd = cometd.Sessions()
    return SalesforceHeaders(AccessLog(app, log))
