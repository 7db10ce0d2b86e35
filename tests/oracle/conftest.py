"""The Oracle client against a real sandbox process: `oracle` (shared, seeded with 1,000 contacts, levers wide
open), `levers` (per-test settings, restored afterwards), `start_oracle` (own instances) come from the sandbox
tests; `make_client` builds an `OracleClient` for a running sandbox and closes it at teardown."""
from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from connectors.oracle.client import OracleClient
from connectors.oracle.config import OracleConfig
from tests.sandbox_oracle.conftest import RunningOracle, levers, oracle, start_oracle  # noqa: F401  (fixtures)
from tests.sandbox_process import tracked


def config_for(running: RunningOracle, **overrides: Any) -> OracleConfig:
    values: dict[str, Any] = dict(base_url=running.base_url, username=running.credentials.username,
                                  password=running.credentials.password, ca_file=running.ca_path,
                                  user_timezone="America/Los_Angeles")
    return OracleConfig(**{**values, **overrides})


@pytest.fixture
def make_client() -> Iterator[Callable[..., OracleClient]]:
    def make(running: RunningOracle, **overrides: Any) -> OracleClient:
        return OracleClient(config_for(running, **overrides))

    yield from tracked(make, OracleClient.close)


@pytest.fixture
def client(oracle: RunningOracle, make_client: Callable[..., OracleClient]) -> OracleClient:  # noqa: F811
    """A client of the shared sandbox whose pacer allows what the shared sandbox allows (no waiting)."""
    return make_client(oracle, rest_requests_per_window=1_000_000, ws_min_interval_seconds=0)
