"""What every API handler receives: the sandbox's shared state (`Sandbox`) and one request (`Call`).

Handlers are plain synchronous functions `handler(call) -> Response`. The request body is read before a handler
runs, so a handler never awaits: each API call runs start to finish on the one store thread (`StoreThread`),
which serializes all SQLite access without locks and lets composite/batch run sub-requests through the very same
handlers. The event loop never touches SQLite, so a long query or a big Bulk job never stalls TLS handshakes,
CometD long polls or Pub/Sub streams: they only wait for their own turn on the store thread.
"""
from __future__ import annotations

import asyncio
import functools
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

from starlette.responses import JSONResponse, Response

from .errors import SalesforceError
from .model import Model
from .settings import Credentials, SandboxSettings
from .store import Store

if TYPE_CHECKING:  # imported for annotations only; these modules import this one
    from sandboxes.control import Faults

    from .admin import Stats
    from .auth import Auth
    from .bulk import BulkJobs
    from .bulk1 import Bulk1Jobs
    from .cdc import ChangeLog
    from .rest import QueryCursors

T = TypeVar("T")


class StoreThread:
    """The single thread that runs every piece of work touching the store (one call at a time, in order)."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="salesforce-store")

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(work, *args))

    def close(self) -> None:
        self._executor.shutdown(wait=True)


@dataclass
class Sandbox:
    """Everything that lives as long as the server: storage, settings, sessions, caches, admin state."""
    model: Model
    store: Store
    settings: SandboxSettings
    credentials: Credentials
    admin_token: str
    org_id: str
    api_user_id: str
    auth: "Auth"
    faults: "Faults"
    stats: "Stats"
    cursors: "QueryCursors"
    jobs: "BulkJobs"
    bulk1: "Bulk1Jobs"
    changes: "ChangeLog"
    worker: StoreThread
    dispatch: Callable[["Call"], Response] = field(repr=False)  # app.dispatch; composite/batch re-enters it
    cometd_timeout_seconds: float = 110.0  # how long a CometD /meta/connect is held without events
    pubsub_address: str | None = None  # host:port of the Pub/Sub API once its listener is bound


@dataclass
class Call:
    """One authenticated API request, with the path relative to `/services/data/vXX.X`."""
    sandbox: Sandbox
    method: str
    path: str  # e.g. '/sobjects/Contact/0035g0000000001AAA', no trailing slash
    raw_path: str  # the same, still percent-encoded (external-id values keep '+' and '%2F' apart)
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case keys
    body: bytes
    version: str  # '59.0'
    user_id: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"/services/data/v{self.version}"

    @property
    def version_number(self) -> float:
        return float(self.version)

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise SalesforceError("JSON_PARSER_ERROR", f"Unexpected character: {exc}") from None

    def json_object(self) -> dict[str, Any]:
        body = self.json()
        if not isinstance(body, dict):
            raise SalesforceError("JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from a non-object "
                                  "value")
        return body

    def auto_assign(self) -> tuple[bool, str | None]:
        """(run assignment rules?, raw header). An absent header means TRUE; only 'FALSE' turns them off."""
        value = self.headers.get("sforce-auto-assign")
        return (value is None or value.strip().lower() != "false"), value


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse(data, status_code=status, headers=dict(headers or {}),
                        media_type="application/json;charset=UTF-8")


def error_response(error: SalesforceError) -> Response:
    return json_response(error.rest_body(), status=error.status)


def no_content() -> Response:
    return Response(status_code=204)
