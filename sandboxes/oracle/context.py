"""What every handler shares: the `Sandbox` (storage, settings, sessions, faults, statistics) and `Stats`.

Handlers are plain synchronous functions: the request body is read before a handler runs, so each API call runs
start to finish on the event loop, which serializes all SQLite access without locks.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping
from zoneinfo import ZoneInfo

from starlette.responses import JSONResponse, Response

from sandboxes.control import Faults
from sandboxes.control import Stats as SharedStats

from .errors import BAD_PARAMETER, OracleError
from .sessions import Sessions
from .settings import Credentials, SandboxSettings
from .store import Store
from .values import Dialect

FAULT_KINDS = ("session_expiry", "rate_limited", "server_error")
MEDIA = "application/vnd.oracle.adf.resource+json"  # the REST API's content type (Supported HTTP Header Fields)


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse(data, status_code=status, headers=dict(headers or {}), media_type=MEDIA)


def paging(query: Mapping[str, str], default_limit: int, maximum: int) -> tuple[int, int]:
    """(offset, limit) from the `offset` and `limit` URL parameters, or the error saying what to send."""
    limit, offset = query.get("limit", str(default_limit)), query.get("offset", "0")
    if not limit.isdigit() or not 1 <= int(limit) <= maximum:
        raise OracleError(BAD_PARAMETER, limit, "limit", f"it must be a whole number from 1 to {maximum}")
    if not offset.isdigit():
        raise OracleError(BAD_PARAMETER, offset, "offset", "it must be a whole number >= 0")
    return int(offset), int(limit)


class Stats(SharedStats):
    """The shared counters plus errors answered (by SBL code) and writes sent with Echo=Off."""

    def reset(self) -> None:
        super().reset()
        self.errors: Counter[str] = Counter()
        self.echo_off = 0

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "errors": dict(self.errors), "echo_off_writes": self.echo_off}


@dataclass
class Sandbox:
    store: Store
    settings: SandboxSettings
    credentials: Credentials
    sessions: Sessions
    zone: ZoneInfo
    user_id: str
    admin_token: str
    faults: Faults
    stats: Stats

    def dialect(self, datetimes: str = "rest", lov: str = "LIC") -> Dialect:
        return Dialect(self.zone, datetimes, lov)

    def save_settings(self) -> None:
        self.settings.save(self.store.path.parent)
