"""What the conformance suite does to a CRM from outside the connector interface, per CRM type.

A harness holds the sandbox's clock (so writes share one modification time: the case change sources get wrong
most easily), switches its rate-limit answers on and off, and names a contact value the CRM refuses. Everything
else the suite does goes through the connector itself.
"""
from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator, Protocol

from crmsync.connectors import RunningSandbox
from tests.connectors import memory


class Harness(Protocol):
    secret_key: str  # the account setting a wrong value of which must fail the login

    def tied_writes(self, running: RunningSandbox) -> Any:
        """Context manager: the writes made inside it share one modification time."""
        ...

    def rate_limited(self, running: RunningSandbox) -> Any:
        """Context manager: the CRM answers some requests with its rate-limit error meanwhile."""
        ...

    def refused_contact_values(self) -> dict[str, Any]:
        """Contact values (CRM field names) the CRM refuses, with its own error."""
        ...

    # Optional: `source_options(mode) -> dict`, extra change_source options for a mode in tests.


class SalesforceHarness:
    secret_key = "password"

    @contextmanager
    def tied_writes(self, running: RunningSandbox) -> Iterator[None]:
        """The sandbox stamps writes with a clock that never goes backwards: set an hour back, every write
        reuses the last stamp (what a bulk job does in a real org)."""
        sandbox_admin(running, "clock", {"offset_seconds": -3600})
        try:
            yield
        finally:
            sandbox_admin(running, "clock", {"offset_seconds": 0})

    @contextmanager
    def rate_limited(self, running: RunningSandbox) -> Iterator[None]:
        sandbox_admin(running, "faults", {"request_limit_exceeded": 0.25, "seed": 5})
        try:
            yield
        finally:
            sandbox_admin(running, "faults", {})

    def refused_contact_values(self) -> dict[str, Any]:
        return {"Email": "refused@invalid.example"}  # the sandbox's validation rule (FIELD_CUSTOM_VALIDATION_...)

    def source_options(self, mode: str) -> dict[str, Any]:
        """cdc: a read ends after a quiet second (the default 0.05 s is for a poller, which is woken when events arrive)."""
        return {"settle_seconds": 1.0} if mode == "cdc" else {}


class MemoryHarness:
    secret_key = "secret"

    @contextmanager
    def tied_writes(self, running: RunningSandbox) -> Iterator[None]:
        org = memory.ORGS[running.account["org"]]
        org.frozen = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
        try:
            yield
        finally:
            org.frozen = None

    @contextmanager
    def rate_limited(self, running: RunningSandbox) -> Iterator[None]:
        yield  # an in-process CRM has no rate limit

    def refused_contact_values(self) -> dict[str, Any]:
        return {"mail": "refused@invalid.example"}


def sandbox_admin(running: RunningSandbox, path: str, body: dict[str, Any]) -> Any:
    import ssl

    import httpx

    answer = httpx.post(f"{running.url}/__sandbox/{path}", json=body, headers={"X-Sandbox-Admin": running.admin_token},
                        verify=ssl.create_default_context(cafile=str(running.ca_file)), timeout=30)
    answer.raise_for_status()
    return answer.json()


def _harnesses() -> dict[str, Harness]:
    from tests.dynamics.harness import DynamicsHarness
    from tests.oracle.harness import OracleHarness

    return {"salesforce": SalesforceHarness(), "memory": MemoryHarness(), "oracle": OracleHarness(),
            "dynamics": DynamicsHarness()}


HARNESSES: dict[str, Harness] = _harnesses()
