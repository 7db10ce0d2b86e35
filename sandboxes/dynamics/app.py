"""The Dynamics sandbox's HTTP application: Entra ID, the Dataverse Web API, and the admin endpoints.

Paths are the real ones: Entra's under `/{tenant}/...` and `/common/...` (entra.py), the Web API under
`/api/data/v9.0|v9.1|v9.2/` (learn.microsoft.com/power-apps/developer/data-platform/webapi/compose-http-requests-
handle-errors), the admin API under `/__sandbox/` (admin.py).

Every Web API request goes through `api_entry`: check the bearer token (401 with `WWW-Authenticate: Bearer
authorization_uri=..., resource_id=...`), roll the fault dice (a faulted request has no side effect), admit it
under service protection (429 + Retry-After), then `dispatch` it and add the remaining-budget headers.
`dispatch` routes one request (also each `$batch` part) to its handler and renders DataverseErrors.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandboxes.control import AccessLog

from . import admin, batch, entra, metadata, records
from .context import Call, Prefer, Sandbox, add_header, error_response, respond
from .entra import Entra, challenge
from .errors import METHOD_NOT_ALLOWED, SERVICE_UNAVAILABLE, UNAUTHORIZED, DataverseError, no_resource
from .model import BY_ENTITY_SET, ENTITIES, Entity
from .odata import split_top_level
from .protection import Protection, Throttled
from .settings import Credentials, OrgSettings
from .store import Store

log = logging.getLogger("crmsync.sandbox.dynamics")
VERSIONS = ("v9.0", "v9.1", "v9.2")
_ACTION = "Microsoft.Dynamics.CRM."
_BULK_ACTIONS: dict[str, Callable[[Call, Entity], Response]] = {
    "CreateMultiple": records.create_multiple, "UpdateMultiple": records.update_multiple,
    "UpsertMultiple": records.upsert_multiple}


def create_sandbox(state_dir: Path, credentials: Credentials, admin_token: str,
                   host_names: tuple[str, ...] = ()) -> Sandbox:
    """Open (or create) the organization stored in `state_dir` and wire up everything the handlers share."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    settings = OrgSettings.load(state_dir)
    store = Store(state_dir, settings)
    ids = store.ensure_org(credentials.username, credentials.client_id)
    names = ("127.0.0.1", "localhost", "::1", *host_names)
    return Sandbox(store=store, settings=settings, credentials=credentials, admin_token=admin_token, ids=ids,
                   entra=Entra(state_dir, store, settings, credentials, dict(ids), names),
                   faults=admin.new_faults(), stats=admin.Stats(), protection=Protection(settings),
                   dispatch=dispatch)


# ---------------------------------------------------------------- routing inside the Web API

def dispatch(call: Call) -> Response:
    """Route one Web API call to its handler; DataverseErrors become Dataverse's error responses."""
    segments = _segments(call.path)
    name = _endpoint_name(segments)
    call.sandbox.stats.record_request(call.method, name)
    try:
        return _route(call, segments)
    except DataverseError as exc:
        return error_response(exc)
    except Exception:  # a sandbox bug: answer like an unexpected server error, keep serving
        log.exception("unhandled error in %s %s", call.method, call.path)
        return error_response(DataverseError(500, "0x80040216", "An unexpected error occurred."))


def _route(call: Call, segments: list[str]) -> Response:
    method = call.method
    if not segments:
        return _only(method, "GET", lambda: service_document(call))
    head, rest = segments[0], segments[1:]
    if head == "$metadata":
        return _only(method, "GET", lambda: respond(200, metadata.csdl(call).encode(),
                                                    media_type="application/xml"))
    if head in ("WhoAmI", "WhoAmI()"):
        return _only(method, "GET", lambda: who_am_i(call))
    if head == "$batch":
        return _only(method, "POST", lambda: batch.batch(call))
    set_name, _, key = head.partition("(")
    if set_name in metadata.RESOLVERS and not key:
        return _only(method, "GET", lambda: metadata.RESOLVERS[set_name](call, rest))
    if set_name in metadata.RESOLVERS:
        return _only(method, "GET", lambda: metadata.RESOLVERS[set_name](call, [head, *rest]))
    entity = BY_ENTITY_SET.get(set_name)
    if entity is None:
        raise no_resource(head)
    if entity.read_only and method != "GET":
        verb = {"POST": "Create", "PATCH": "Update", "PUT": "Update", "DELETE": "Delete"}.get(method, method)
        raise DataverseError(405, METHOD_NOT_ALLOWED, f"The '{verb}' method does not support entities of type "
                                                      f"'{entity.name}'.")
    if not key:
        return _collection(call, entity, rest)
    if not key.endswith(")"):
        raise no_resource(head)
    return _record(call, entity, key[:-1], rest)


def _collection(call: Call, entity: Entity, rest: list[str]) -> Response:
    method = call.method
    if not rest:
        if method == "GET":
            return records.query(call, entity)
        return _only(method, "POST", lambda: records.create(call, entity))
    if rest == ["$count"]:
        return _only(method, "GET", lambda: records.count_rows(call, entity))
    if len(rest) == 1 and rest[0].startswith(_ACTION) and rest[0][len(_ACTION):] in _BULK_ACTIONS:
        return _only(method, "POST", lambda: _BULK_ACTIONS[rest[0][len(_ACTION):]](call, entity))
    raise no_resource("/".join(rest))


def _record(call: Call, entity: Entity, key: str, rest: list[str]) -> Response:
    method = call.method
    if not rest:
        handlers = {"GET": lambda: records.retrieve(call, entity, key),
                    "PATCH": lambda: records.upsert(call, entity, key),
                    "DELETE": lambda: records.delete(call, entity, key)}
        if method not in handlers:
            raise _not_allowed(method)
        return handlers[method]()
    if len(rest) == 2 and rest[1] == "$value":
        return _only(method, "GET", lambda: records.property_value(call, entity, key, rest[0], raw=True))
    if len(rest) == 1:
        if method == "GET":
            return records.property_value(call, entity, key, rest[0], raw=False)
        if method in ("PUT", "DELETE"):
            return records.property_write(call, entity, key, rest[0])
        raise _not_allowed(method)
    raise no_resource("/".join(rest))


def _only(method: str, allowed: str, handler: Callable[[], Response]) -> Response:
    if method != allowed:
        raise _not_allowed(method)
    return handler()


def _not_allowed(method: str) -> DataverseError:
    return DataverseError(405, METHOD_NOT_ALLOWED, f"The requested resource does not support http method "
                                                   f"'{method}'.")


def _segments(path: str) -> list[str]:
    """Split a path on '/', except inside quotes or parentheses (keys may hold '/')."""
    return split_top_level(path.strip("/"), "/")


def _endpoint_name(segments: list[str]) -> str:
    """A stable name for statistics: the entity set or function, keys replaced by `(key)`."""
    if not segments:
        return "service document"
    names = [re.sub(r"\(.*\)$", "(key)", s) if s not in ("WhoAmI()",) else "WhoAmI" for s in segments[:3]]
    return "/".join(names)


def service_document(call: Call) -> Response:
    return respond(200, {"@odata.context": f"{call.service_root}/$metadata",
                         "value": [{"name": e.entity_set, "kind": "EntitySet", "url": e.entity_set}
                                   for e in ENTITIES.values()]})


def who_am_i(call: Call) -> Response:
    ids = call.sandbox.ids
    return respond(200, {"@odata.context": f"{call.service_root}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                         "BusinessUnitId": ids["business_unit_id"], "UserId": call.user_id,
                         "OrganizationId": ids["organization_id"]})


# ---------------------------------------------------------------- the HTTP entry point

async def api_entry(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    version = request.path_params["version"]
    if version not in VERSIONS:
        return error_response(no_resource(f"v{version}"))
    origin = f"https://{request.headers.get('host') or request.url.netloc}"
    principal = _authenticate(sandbox, request)
    if principal is None:
        return _unauthorized(sandbox, origin, bool(request.headers.get("authorization")))
    decision = sandbox.faults.decide()
    if decision.kind:
        return _fault(sandbox, decision.kind, origin)
    user = principal.user_id
    started = sandbox.store.now().timestamp()
    try:
        sandbox.protection.admit(user, started)
    except Throttled as throttled:
        return error_response(throttled.error, [("Retry-After", str(throttled.retry_after)),
                                                *sandbox.protection.headers(user, started)])
    clock = time.perf_counter()
    try:
        if decision.delay:  # a slow server: the stall counts as execution time and keeps the request in flight
            await asyncio.sleep(decision.delay)
        body = await request.body()
        call = Call(sandbox=sandbox, method=request.method, path="/" + request.path_params.get("rest", ""),
                    query=dict(request.query_params), headers={k.lower(): v for k, v in request.headers.items()},
                    body=body, version=version[1:], origin=origin, user_id=user,
                    prefer=Prefer.parse(", ".join(request.headers.getlist("prefer"))))
        response = sandbox.dispatch(call)
    finally:
        sandbox.protection.finish(user, started, time.perf_counter() - clock)
    for name, value in sandbox.protection.headers(user, sandbox.store.now().timestamp()):
        add_header(response, name, value)
    return response


def _authenticate(sandbox: Sandbox, request: Request) -> Any:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return sandbox.entra.verify(token.strip(), request.headers.get("host", ""))


def _unauthorized(sandbox: Sandbox, origin: str, token_given: bool) -> Response:
    headers = [("WWW-Authenticate", challenge(sandbox.entra, origin))]
    if not token_given:
        return respond(401, None, headers)
    return error_response(DataverseError(401, UNAUTHORIZED, "The user is not authenticated: the access token is "
                                         "missing, invalid, expired, or issued for another resource."), headers)


def _fault(sandbox: Sandbox, kind: str, origin: str) -> Response:
    sandbox.stats.faults[kind] += 1
    if kind == "token_expiry":
        sandbox.entra.expire_all()
        return _unauthorized(sandbox, origin, True)
    if kind == "throttle_429":
        s = sandbox.settings
        return error_response(DataverseError(429, "0x80072322", f"Number of requests exceeded the limit of "
                                             f"{s.requests_per_window} over time window of {s.window_seconds} "
                                             "seconds."), [("Retry-After", "1")])
    return error_response(DataverseError(503, SERVICE_UNAVAILABLE, "The service is temporarily unavailable. "
                                         "Try again later."))


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    return error_response(DataverseError(status, "0x80060888" if status == 404 else "0x80040216",
                                         "Resource not found." if status == 404 else str(getattr(exc, "detail", exc))))


def build_app(sandbox: Sandbox) -> Any:
    methods = ["GET", "POST", "PATCH", "PUT", "DELETE"]
    routes = [
        Route("/api/data/{version}", api_entry, methods=methods),
        Route("/api/data/{version}/{rest:path}", api_entry, methods=methods),
        Route("/common/discovery/instance", entra.instance_discovery, methods=["GET"]),
        Route("/common/userrealm/{username}", entra.user_realm, methods=["GET"]),
        Route("/common/UserRealm/{username}", entra.user_realm, methods=["GET"]),
        Route("/{tenant}/v2.0/.well-known/openid-configuration", entra.openid_configuration, methods=["GET"]),
        Route("/{tenant}/.well-known/openid-configuration", entra.openid_configuration, methods=["GET"]),
        Route("/{tenant}/discovery/v2.0/keys", entra.keys, methods=["GET"]),
        Route("/{tenant}/discovery/keys", entra.keys, methods=["GET"]),
        Route("/{tenant}/oauth2/v2.0/token", entra.token, methods=["POST"]),
        Route("/{tenant}/oauth2/token", entra.token, methods=["POST"]),
        *[Route(path, endpoint, methods=verbs) for path, verbs, endpoint in admin.ENDPOINTS],
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.sandbox = sandbox
    return AccessLog(app, log)

