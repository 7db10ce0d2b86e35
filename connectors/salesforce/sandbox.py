"""The local Salesforce sandbox as the connector's `sandbox()`: started as a child process for `crmsync run`,
the demo and the tests, with the account settings that reach it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from crmsync.connectors import RunningSandbox
from sandboxes.control import DEFAULT_ADMIN_TOKEN
from sandboxes.launch import answers, launch


class SalesforceSandboxKit:
    def start(self, state_dir: Path, *, seed_contacts: int = 0, log_file: Path | None = None) -> RunningSandbox:
        """`crmsync sandbox salesforce` (state under `state_dir`/sandboxes/salesforce, the CA one level up),
        returned once it answers."""
        started = launch("salesforce", state_dir / "sandboxes" / "salesforce",
                         ["--seed-contacts", str(seed_contacts), "--pubsub-port", "0"], log_file=log_file)
        return RunningSandbox(started.process, started.url, started.ca_file,
                              self.account(started.url, started.ca_file), DEFAULT_ADMIN_TOKEN)

    def attach(self, url: str, ca_file: Path) -> RunningSandbox:
        if not answers(f"{url}/services/data/", ca_file):
            raise ValueError(f"no Salesforce sandbox answers at {url}")
        return RunningSandbox(None, url, ca_file, self.account(url, ca_file), DEFAULT_ADMIN_TOKEN)

    def refused_contact_values(self) -> dict[str, Any]:
        return {"email": "refused@invalid.example"}  # the sandbox's validation rule on Contact.Email

    @staticmethod
    def account(url: str, ca_file: Path) -> dict[str, Any]:
        """The account settings that reach the sandbox (its default credentials)."""
        from sandboxes.salesforce.settings import DEFAULT_CREDENTIALS as creds

        return {"type": "salesforce", "login_url": url, "username": creds.username, "password": creds.password,
                "security_token": creds.security_token, "client_id": creds.client_id,
                "client_secret": creds.client_secret, "ca_file": str(ca_file), "auth": "oauth"}

