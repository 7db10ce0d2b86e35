"""Dynamics sandbox configuration: the tenant's credentials (command line / environment) and the organization's
settings (`<state dir>/settings.json`).

Credentials are never written to disk and never appear in a repr or a log line. Organization settings are
written with the defaults below on first start so a developer can edit them; the admin API changes some of them
at runtime (limits, ExpireChangeTrackingInDays) without persisting.

Defaults follow the documented Dataverse values:
  * service protection: 6,000 requests and 1,200 s of combined execution time per user in a 300 s sliding
    window, 52 concurrent requests (learn.microsoft.com/power-apps/developer/data-platform/api-limits)
  * ExpireChangeTrackingInDays = 7 (Organization table column of that name); change tracking on for every table
    except those listed in `untracked_tables` (a table property a maker switches, "Track changes")
  * access tokens live 60-90 minutes at Entra; the sandbox issues 3,599 s tokens like the client-credentials
    example response (learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sandboxes.control import load_settings

SETTINGS_FILE = "settings.json"
from sandboxes.control import DEFAULT_ADMIN_TOKEN  # noqa: E402,F401 - re-exported
"""Header value for `X-Sandbox-Admin` on the /__sandbox/* endpoints; override with --admin-token."""


@dataclass(frozen=True)
class Credentials:
    """The tenant, its one app registration and its one user. Secrets are hidden from repr().

    `certificate` is the path of a PEM certificate registered on the app (client assertions signed with its
    key are accepted); None means only the client secret works for client credentials.
    """
    tenant_id: str
    client_id: str
    client_secret: str = field(repr=False)
    username: str
    password: str = field(repr=False)
    certificate: Path | None = None


DEFAULT_CREDENTIALS = Credentials(
    tenant_id="6f1c2a8e-3b4d-4c5e-9f60-7a8b9c0d1e2f",
    client_id="51f81489-12ee-4a9e-aaae-a2591f45987d",
    client_secret="crmsync-dynamics-sandbox-secret",
    username="integration@crmsync.onmicrosoft.com",
    password="crmsync-sandbox",
)


@dataclass
class OrgSettings:
    """What an administrator would set on the environment and the tenant."""
    org_name: str = "crmsync"  # the environment URL is https://<org_name>.crm.dynamics.com
    org_domain: str = "crm.dynamics.com"
    access_token_lifetime_seconds: int = 3599
    refresh_token_lifetime_seconds: int = 90 * 86400  # Entra's default refresh-token lifetime: 90 days
    expire_change_tracking_days: int = 7
    untracked_tables: list[str] = field(default_factory=list)  # tables whose "Track changes" is off
    max_page_size: int = 5000
    requests_per_window: int = 6000
    execution_seconds_per_window: float = 1200.0
    window_seconds: int = 300
    max_concurrent_requests: int = 52
    max_batch_requests: int = 1000
    max_count: int = 5000  # @odata.count never goes above this (Dataverse's cap)

    @property
    def org_url(self) -> str:
        return f"https://{self.org_name}.{self.org_domain}"

    @classmethod
    def load(cls, state_dir: Path) -> "OrgSettings":
        """Read settings.json, creating it with the defaults on first start; unknown keys are ignored."""
        return load_settings(cls, state_dir, SETTINGS_FILE)
