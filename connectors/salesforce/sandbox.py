"""The local Salesforce sandbox as the connector's `sandbox()`: started as a child process for `crmsync run`,
the demo and the tests, with the account settings that reach it."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from crmsync.connectors import RunningSandbox
from crmsync.process import stop
from sandboxes.control import DEFAULT_ADMIN_TOKEN
from sandboxes.launch import answers, launch, seeded_timeout


class SalesforceSandboxKit:
    def start(self, state_dir: Path, *, seed_contacts: int = 0, log_file: Path | None = None) -> RunningSandbox:
        """`crmsync sandbox salesforce` (state under `state_dir`/sandboxes/salesforce, the CA one level up),
        returned once it answers."""
        started = launch("salesforce", state_dir / "sandboxes" / "salesforce",
                         ["--seed-contacts", str(seed_contacts), "--pubsub-port", "0"], log_file=log_file,
                         timeout=seeded_timeout(seed_contacts))
        try:
            pubsub = pubsub_endpoint(started.url, started.ca_file)
        except BaseException:
            stop(started.process)
            raise
        return RunningSandbox(started.process, started.url, started.ca_file,
                              self.account(started.url, started.ca_file, pubsub), DEFAULT_ADMIN_TOKEN)

    def attach(self, url: str, ca_file: Path) -> RunningSandbox:
        if not answers(f"{url}/services/data/", ca_file):
            raise ValueError(f"no Salesforce sandbox answers at {url}")
        return RunningSandbox(None, url, ca_file, self.account(url, ca_file, pubsub_endpoint(url, ca_file)),
                              DEFAULT_ADMIN_TOKEN)

    def refused_contact_values(self) -> dict[str, Any]:
        return {"email": "refused@invalid.example"}  # the sandbox's validation rule on Contact.Email

    @staticmethod
    def account(url: str, ca_file: Path, pubsub: str | None = None) -> dict[str, Any]:
        """The account settings that reach the sandbox (its default credentials, its Pub/Sub API listener)."""
        from sandboxes.salesforce.settings import DEFAULT_CREDENTIALS as creds

        account = {"type": "salesforce", "login_url": url, "username": creds.username, "password": creds.password,
                   "security_token": creds.security_token, "client_id": creds.client_id,
                   "client_secret": creds.client_secret, "ca_file": str(ca_file), "auth": "oauth"}
        return {**account, "pubsub_endpoint": pubsub} if pubsub else account


def pubsub_endpoint(url: str, ca_file: Path, timeout: float = 30.0) -> str | None:
    """The sandbox's Pub/Sub API host:port, from its admin API (its listener starts right after HTTPS); None when
    the admin API does not say (another admin token): the account then polls every object."""
    import ssl

    import httpx

    context = ssl.create_default_context(cafile=str(ca_file))
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = httpx.get(f"{url}/__sandbox/cdc", headers={"X-Sandbox-Admin": DEFAULT_ADMIN_TOKEN},
                               verify=context, timeout=10)
            answer.raise_for_status()
        except httpx.HTTPError:
            return None
        found = answer.json().get("pubsub")
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)

