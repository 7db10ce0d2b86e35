"""What every Web API handler receives: the sandbox's shared state (`Sandbox`) and one request (`Call`), plus the
response builder that spells headers the way Dataverse does.

Handlers are plain synchronous functions `handler(call) -> Response`. The body is read before a handler runs,
so each call runs start to finish on the event loop; that serializes SQLite access without locks and lets
`$batch` run its parts through the very same handlers.

Header names: Starlette lower-cases header names, but Dataverse sends `OData-Version`, `OData-EntityId`,
`Preference-Applied`, `REQ_ID`... and some clients look them up case-sensitively (plain dicts), so `respond`
writes `raw_headers` itself with the real spelling.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from starlette.responses import Response

from .errors import DataverseError
from .settings import Credentials, OrgSettings
from .store import Store

if TYPE_CHECKING:  # imported for annotations only; these modules import this one
    from .admin import Faults, Stats
    from .model import Entity
    from .entra import Entra
    from .protection import Protection

JSON_TYPE = "application/json; odata.metadata=minimal"


@dataclass
class Sandbox:
    """Everything that lives as long as the server: storage, settings, identities, admin state."""
    store: Store
    settings: OrgSettings
    credentials: Credentials
    admin_token: str
    ids: Mapping[str, str]  # organization_id, business_unit_id, user_id, app_user_id
    entra: "Entra"
    faults: "Faults"
    stats: "Stats"
    protection: "Protection"
    dispatch: Callable[["Call"], Response] = field(repr=False)  # app.dispatch; $batch re-enters it

    def tracks_changes(self, entity: "Entity") -> bool:
        """ChangeTrackingEnabled: the table supports it and nobody switched it off (settings, admin API)."""
        return entity.change_tracking and entity.name not in self.settings.untracked_tables


@dataclass
class Prefer:
    """The `Prefer` header, parsed (values may be quoted, several headers or comma-separated)."""
    return_representation: bool = False
    max_page_size: int | None = None
    include_annotations: str | None = None
    track_changes: bool = False
    continue_on_error: bool = False

    @classmethod
    def parse(cls, header: str) -> "Prefer":
        prefer = cls()
        for part in header.split(","):
            key, _, value = part.strip().partition("=")
            key, value = key.strip().lower(), value.strip().strip('"')
            if key == "return" and value == "representation":
                prefer.return_representation = True
            elif key == "odata.maxpagesize":
                try:
                    prefer.max_page_size = int(value)
                except ValueError:
                    pass
            elif key == "odata.include-annotations":
                prefer.include_annotations = value
            elif key == "odata.track-changes":
                prefer.track_changes = True
            elif key == "odata.continue-on-error":
                prefer.continue_on_error = True
        return prefer

    def wants(self, annotation: str) -> bool:
        """Whether `odata.include-annotations` asks for `annotation` (patterns: *, Namespace.*, a list)."""
        if not self.include_annotations:
            return False
        for pattern in self.include_annotations.split(","):
            pattern = pattern.strip()
            if pattern.startswith("-"):
                continue
            if pattern == "*" or pattern == annotation or \
                    (pattern.endswith(".*") and annotation.startswith(pattern[:-1])):
                return True
        return False


@dataclass
class Call:
    """One authenticated Web API request; `path` is relative to `/api/data/v9.x` (leading '/', no trailing '/')."""
    sandbox: Sandbox
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case keys
    body: bytes
    version: str  # '9.2'
    origin: str  # https://host:port as the client reached the server
    user_id: str
    prefer: Prefer = field(default_factory=Prefer)
    params: dict[str, str] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)  # Preference-Applied values

    @property
    def service_root(self) -> str:
        return f"{self.origin}/api/data/v{self.version}"

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise DataverseError(400, "0x80048d19", f"Error identified in Payload provided by the user: the body "
                                                    f"isn't valid JSON ({exc}).") from None

    def json_object(self) -> dict[str, Any]:
        body = self.json()
        if not isinstance(body, dict):
            raise DataverseError(400, "0x80048d19", "Error identified in Payload provided by the user: the body "
                                                    "must be a JSON object.")
        return body


def respond(status: int = 200, body: Any = None, headers: Sequence[tuple[str, str]] = (),
            media_type: str | None = JSON_TYPE) -> Response:
    """A response with Dataverse's standard headers, names spelled as Dataverse spells them."""
    content = b"" if body is None else body if isinstance(body, bytes) else \
        json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    request_id = str(uuid.uuid4())
    names = [("OData-Version", "4.0"), ("REQ_ID", request_id), ("x-ms-service-request-id", request_id)]
    if body is not None and media_type:
        names.append(("Content-Type", media_type if "charset" in media_type else f"{media_type}; charset=utf-8"))
    response = Response(content=content, status_code=status)
    response.raw_headers = [(b"content-length", str(len(content)).encode())] + \
        [(k.encode("latin-1"), v.encode("latin-1")) for k, v in [*names, *headers]]
    return response


def add_header(response: Response, name: str, value: str) -> None:
    response.raw_headers.append((name.encode("latin-1"), value.encode("latin-1")))


def error_response(error: DataverseError, headers: Sequence[tuple[str, str]] = ()) -> Response:
    return respond(error.status, error.body(), headers)
