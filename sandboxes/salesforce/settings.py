"""Sandbox configuration: login credentials (from the command line) and org settings (from settings.json).

Credentials are never written to disk by the sandbox and never appear in a repr or a log line. Org settings live
in `<state dir>/settings.json`, written with the defaults below on first start so a developer can edit them:
the daily API limit, session and refresh-token lifetimes, validation rules and assignment rules.

Validation rules behave like Salesforce's: a rule *fires* (the write fails with
FIELD_CUSTOM_VALIDATION_EXCEPTION and the rule's message) when its condition is true for the record as it would
be saved. Assignment rules route a new or updated record's OwnerId by the value of one field (e.g. a country),
mapping owner usernames to the values they own.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from sandboxes import control

DEFAULT_STATE_DIR = Path(".crmsync/sandboxes/salesforce")
DEFAULT_RETENTION_SECONDS = 72 * 3600  # change events are kept 72 hours, like Salesforce's

SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class Credentials:
    """The one API user's login and the connected app it logs in through. Secrets are hidden from repr()."""
    username: str
    password: str = field(repr=False)
    security_token: str = field(repr=False)
    client_id: str
    client_secret: str = field(repr=False)


DEFAULT_CREDENTIALS = Credentials(
    username="integration@crmsync.example",
    password="crmsync-sandbox",
    security_token="SANDBOXTOKEN",
    client_id="crmsync-sandbox-client",
    client_secret="crmsync-sandbox-secret",
)
from sandboxes.control import DEFAULT_ADMIN_TOKEN  # noqa: E402,F401 - re-exported
"""Header value for `X-Sandbox-Admin` on the /__sandbox/* endpoints; override with --admin-token."""

SALES_OWNERS = {
    "emea.sales@crmsync.example": ("Emma", "Schmidt", "Germany"),
    "amer.sales@crmsync.example": ("Alex", "Johnson", "United States"),
    "apac.sales@crmsync.example": ("Aiko", "Tanaka", "Japan"),
}
"""Users the sandbox creates besides the API user, so assignment rules have someone to assign to."""

_REGIONS = {
    "emea.sales@crmsync.example": ["United Kingdom", "France", "Germany", "Spain", "Italy", "Netherlands",
                                   "Ireland", "Sweden"],
    "amer.sales@crmsync.example": ["United States", "Canada", "Mexico", "Brazil"],
    "apac.sales@crmsync.example": ["Japan", "Australia", "Singapore", "India"],
}


VALIDATION_OPERATORS = ("ends_with", "equals", "matches", "is_blank")


@dataclass(frozen=True)
class ValidationRule:
    object: str
    field: str
    operator: str  # ends_with | equals | matches (regex search) | is_blank
    value: str = ""
    message: str = "Validation failed"
    active: bool = True

    def __post_init__(self) -> None:
        if self.operator not in VALIDATION_OPERATORS:  # fail at startup, not on the first matching write
            raise ValueError(f"validation rule on {self.object}.{self.field}: operator must be one of "
                             f"{VALIDATION_OPERATORS}, not {self.operator!r}")

    def fires(self, row: Mapping[str, Any]) -> bool:
        """True when the record violates the rule, i.e. the save must be refused."""
        value = row.get(self.field)
        if self.operator == "is_blank":
            return value in (None, "")
        if value is None:
            return False
        text = str(value)
        if self.operator == "ends_with":
            return text.lower().endswith(self.value.lower())
        if self.operator == "equals":
            return text.lower() == self.value.lower()
        return re.search(self.value, text) is not None  # "matches"


@dataclass(frozen=True)
class AssignmentRule:
    object: str
    field: str
    owners: Mapping[str, list[str]]  # owner username -> field values (case-insensitive) routed to that owner

    def owner_for(self, row: Mapping[str, Any]) -> str | None:
        value = row.get(self.field)
        if not value:
            return None
        for username, values in self.owners.items():
            if str(value).lower() in (v.lower() for v in values):
                return username
        return None


def _default_validation_rules() -> list[ValidationRule]:
    return [ValidationRule("Contact", "Email", "ends_with", "@invalid.example",
                           "Email addresses at invalid.example are rejected by the sandbox's validation rule.")]


def _default_assignment_rules() -> list[AssignmentRule]:
    return [AssignmentRule("Lead", "Country", _REGIONS), AssignmentRule("Account", "BillingCountry", _REGIONS)]


@dataclass
class SandboxSettings:
    org_name: str = "crmsync Sandbox Org"
    is_sandbox: bool = True
    daily_api_max: int = 5_000_000
    session_lifetime_seconds: int = 7200  # Salesforce's default session timeout: 2 hours of inactivity
    refresh_token_lifetime_seconds: int | None = None  # None: valid until revoked, the connected-app default
    recycle_bin_days: int = 15
    jwt_certificate: str | None = None  # PEM certificate path; when set, JWT bearer assertions must verify
    validation_rules: list[ValidationRule] = field(default_factory=_default_validation_rules)
    assignment_rules: list[AssignmentRule] = field(default_factory=_default_assignment_rules)
    custom_fields: list[dict[str, Any]] = field(default_factory=list)  # added at runtime via /__sandbox/fields

    def assignment_rule(self, object_name: str) -> AssignmentRule | None:
        return next((r for r in self.assignment_rules if r.object == object_name), None)

    def rules_for(self, object_name: str) -> list[ValidationRule]:
        return [r for r in self.validation_rules if r.object == object_name and r.active]

    @classmethod
    def load(cls, state_dir: Path) -> "SandboxSettings":
        """Read settings.json, creating it with the defaults on first start."""
        return control.load_settings(cls, state_dir, SETTINGS_FILE, _nested_rules)


def _nested_rules(raw: dict[str, Any]) -> dict[str, Any]:
    raw["validation_rules"] = [ValidationRule(**r) for r in raw.get("validation_rules", [])]
    raw["assignment_rules"] = [AssignmentRule(**r) for r in raw.get("assignment_rules", [])]
    return raw
