"""Sandbox configuration: the API user's credentials (command line / environment) and the company settings and
limiter levers (`<state>/settings.json`, written with the defaults on first start; the admin API changes them at
run time and writes them back).

Defaults follow Oracle's documented limits: 30 REST requests per minute per session in fixed windows
(OnDemRestAPI_Overview18.html); at most 10 concurrent sessions per company, 20 Web Services requests per second
per session measured as at least 50 ms between requests, 20 top-level records per write request, 100 records per
query page, 600 s of inactivity before a session closes and 28,800 KB per request (Web Services On Demand
Limiters, OnDemWebSvcs_Limiters2/3.html; Batch Processing, OnDemWebSvcs_BestPractices18.html).

Levers where the documentation is silent (docs/oracle.md explains each):
- `rest_rate_limit_status`: the HTTP status of the REST rate-limit error. The guide gives the message but not the
  status; 400 is in its status-code table, 429 is what most clients expect.
- `rest_window_alignment`: "session" (windows start when the session starts) or "clock" (wall-clock minutes).
- `sort_or_filter`: refuse a query that both filters and sorts, as Adobe documents for the v1.0 API.
- `ws_v2_insert_or_update`: accept `<Object>InsertOrUpdate` on Web Services v2.0 services. Oracle lists
  InsertOrUpdate for v1.0 only; the sandbox accepts it on v2.0 unless this is switched off.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_TIMEZONE = "America/Los_Angeles"  # the API user's time zone: REST datetimes are written and read in it

SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class Credentials:
    """The API user's sign-in. The password is hidden from repr() and never written to disk or logs."""
    username: str
    password: str = field(repr=False)


DEFAULT_CREDENTIALS = Credentials(username="CRMSYNC/INTEGRATION", password="crmsync-sandbox")


@dataclass
class SandboxSettings:
    company_name: str = "crmsync Sandbox Company"
    max_sessions: int = 10
    session_inactivity_seconds: int = 600
    rest_requests_per_window: int = 30
    rest_window_seconds: float = 60.0
    rest_window_alignment: str = "session"  # session | clock
    rest_rate_limit_status: int = 400
    ws_min_interval_ms: int = 50
    ws_batch_limit: int = 20
    page_size_limit: int = 100
    request_size_kb: int = 28800
    deleted_item_retention_days: int = 30
    sort_or_filter: bool = False
    ws_v2_insert_or_update: bool = True

    @classmethod
    def load(cls, state_dir: Path) -> "SandboxSettings":
        """Read settings.json (unknown keys ignored), creating it with the defaults on first start."""
        path = Path(state_dir) / SETTINGS_FILE
        settings = cls()
        if path.exists():
            settings.update(json.loads(path.read_text()), strict=False)
        settings.save(state_dir)
        return settings

    def save(self, state_dir: Path) -> None:
        (Path(state_dir) / SETTINGS_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    def update(self, values: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
        """Apply `values` (type-checked against the defaults); unknown keys raise when `strict`."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown and strict:
            raise ValueError(f"unknown settings {unknown}; known: {sorted(known)}")
        checked = {name: _checked(name, getattr(self, name), value) for name, value in values.items()
                   if name in known}
        for name, value in checked.items():
            setattr(self, name, value)
        return asdict(self)


_CHOICES = {"rest_window_alignment": ("session", "clock"), "rest_rate_limit_status": (400, 403, 429, 503)}


def _checked(name: str, current: Any, value: Any) -> Any:
    """`value` converted to the type of the setting's current value, or ValueError saying what is expected."""
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, not {value!r}")
    elif isinstance(current, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, not {value!r}")
        value = type(current)(value)
    elif not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {value!r}")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ValueError(f"{name} must be one of {_CHOICES[name]}, not {value!r}")
    return value
