"""What every API handler receives: the sandbox's shared state (`Sandbox`) and one request (`Call`).

Handlers are plain synchronous functions `handler(call) -> Response`. The request body is read before a handler
runs, so a handler never awaits: each API call runs start to finish on the event loop, which serializes all
SQLite access without locks and lets composite/batch run sub-requests through the very same handlers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from starlette.responses import JSONResponse, Response

from .errors import SalesforceError
from .model import Model
from .settings import Credentials, SandboxSettings
from .store import Store

if TYPE_CHECKING:  # imported for annotations only; these modules import this one
    from sandboxes.faults import Faults

    from .admin import Stats
    from .auth import Auth
    from .bulk import BulkJobs
    from .rest import QueryCursors


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
    dispatch: Callable[["Call"], Response] = field(repr=False)  # app.dispatch; composite/batch re-enters it


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
