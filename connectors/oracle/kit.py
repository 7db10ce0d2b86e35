"""The Oracle CRM On Demand sandbox as a child process, with the account settings that reach it
(crmsync.connectors.SandboxKit): for the demo, the conformance suite and anyone trying the connector offline.

The account leaves `user_timezone` out, so the connector reads it from the API user's profile as it would on a
real pod; the sandbox's user is in America/Los_Angeles (sandboxes/oracle/server.py).
"""
from __future__ import annotations

from pathlib import Path

from crmsync.connectors import RunningSandbox
from sandboxes.control import DEFAULT_ADMIN_TOKEN
from sandboxes.launch import launch
from sandboxes.oracle.settings import DEFAULT_CREDENTIALS


class OracleSandboxKit:
    def start(self, state_dir: Path, *, seed_contacts: int = 0, log_file: Path | None = None) -> RunningSandbox:
        started = launch("oracle", state_dir, ["--seed-contacts", str(seed_contacts)], log_file=log_file)
        account = {"type": "oracle", "url": started.url, "username": DEFAULT_CREDENTIALS.username,
                   "password": DEFAULT_CREDENTIALS.password, "ca_file": str(started.ca_file)}
        return RunningSandbox(started.process, started.url, started.ca_file, account, DEFAULT_ADMIN_TOKEN)
