"""The conformance suite's harness for Dynamics 365 (tests/connectors/harnesses.py registers it as
`"dynamics": DynamicsHarness()`): what a test does to the Dataverse sandbox from outside the connector interface."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from crmsync.connectors import RunningSandbox
from tests.connectors.harnesses import sandbox_admin as _admin


class DynamicsHarness:
    secret_key = "client_secret"

    @contextmanager
    def tied_writes(self, running: RunningSandbox) -> Iterator[None]:
        """The sandbox clock is held still: every write meanwhile gets the same modifiedon."""
        _admin(running, "clock", {"frozen": True})
        try:
            yield
        finally:
            _admin(running, "clock", {"frozen": False})

    @contextmanager
    def rate_limited(self, running: RunningSandbox) -> Iterator[None]:
        """A quarter of the Web API requests get service protection's 429 (Retry-After: 1, 0x80072322)."""
        _admin(running, "faults", {"throttle_429": 0.25, "seed": 5})
        try:
            yield
        finally:
            _admin(running, "faults", {})

    def refused_contact_values(self) -> dict[str, Any]:
        return {"lastname": "x" * 51}  # contact.lastname holds 50 characters (0x80044331, as Dataverse answers)
