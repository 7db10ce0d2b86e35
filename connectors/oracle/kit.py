"""The Oracle CRM On Demand sandbox as a child process, with the account settings that reach it
(crmsync.connectors.SandboxKit): for the demo, the conformance suite and anyone trying the connector offline.

The account leaves `user_timezone` out, so the connector reads it from the API user's profile as it would on a
real pod; the sandbox's user is in America/Los_Angeles (sandboxes/oracle/server.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from crmsync.connectors import RunningSandbox
from sandboxes.control import DEFAULT_ADMIN_TOKEN
from sandboxes.launch import answers, launch, seeded_timeout
from sandboxes.oracle.settings import DEFAULT_CREDENTIALS


class OracleSandboxKit:
    def start(self, state_dir: Path, *, seed_contacts: int = 0, log_file: Path | None = None) -> RunningSandbox:
        """State under `state_dir`/sandboxes/oracle (the CA one level up, shared by every sandbox)."""
        started = launch("oracle", state_dir / "sandboxes" / "oracle", ["--seed-contacts", str(seed_contacts)],
                         log_file=log_file, timeout=seeded_timeout(seed_contacts))
        return RunningSandbox(started.process, started.url, started.ca_file,
                              self.account(started.url, started.ca_file), DEFAULT_ADMIN_TOKEN)

    def attach(self, url: str, ca_file: Path) -> RunningSandbox:
        if not answers(url, ca_file):
            raise ValueError(f"no Oracle CRM On Demand sandbox answers at {url}")
        return RunningSandbox(None, url, ca_file, self.account(url, ca_file), DEFAULT_ADMIN_TOKEN)

    def refused_contact_values(self) -> dict[str, Any]:
        return {"job_title": "x" * 200}  # JobTitle holds 75 characters: the sandbox refuses it, as OOD does

    @staticmethod
    def account(url: str, ca_file: Path) -> dict[str, Any]:
        return {"type": "oracle", "url": url, "username": DEFAULT_CREDENTIALS.username,
                "password": DEFAULT_CREDENTIALS.password, "ca_file": str(ca_file)}
