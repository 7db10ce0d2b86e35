"""The Oracle client and connector against a real sandbox process: `oracle` (shared, seeded with 1,000 contacts,
levers wide open), `levers` (per-test settings, restored afterwards), `start_oracle` (own instances) come from the
sandbox tests; `make_client` builds an `OracleClient` for a running sandbox, `connect` the connector's
`OracleConnection`, both closed at teardown; `own_oracle` is an empty sandbox for one test module."""
from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from connectors.oracle import CONNECTOR
from connectors.oracle.account import OracleAccount
from connectors.oracle.client import OracleClient
from connectors.oracle.config import OracleConfig
from connectors.oracle.connection import OracleConnection
from tests.sandbox_oracle.conftest import (WIDE_OPEN, RunningOracle, launch, levers, oracle,  # noqa: F401  (fixtures)
                                           start_oracle)
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


# -- the connector (connectors/oracle/__init__.py) ---------------------------------------------------------------
def account_for(running: RunningOracle, **overrides: Any) -> OracleAccount:
    """The account reaching a sandbox, its pacing opened as wide as the sandbox's WIDE_OPEN levers."""
    values: dict[str, Any] = dict(url=running.base_url, username=running.credentials.username,
                                  password=running.credentials.password, ca_file=running.ca_path,
                                  rest_requests_per_window=1_000_000, ws_min_interval_ms=0)
    return OracleAccount(**{**values, **overrides})


@pytest.fixture
def connect() -> Iterator[Callable[..., OracleConnection]]:
    """connect(sandbox, **account overrides) -> a signed-in OracleConnection named 'ood', closed at teardown."""
    def make(running: RunningOracle, **overrides: Any) -> OracleConnection:
        return CONNECTOR.client("ood", account_for(running, **overrides))

    yield from tracked(make, OracleConnection.close)


@pytest.fixture(scope="module")
def own_oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOracle]:
    """A sandbox for one test module alone (empty, levers wide open): exact counts and clock moves."""
    running = launch(tmp_path_factory.mktemp("ood-own") / "oracle")
    running.admin("settings", WIDE_OPEN)
    yield running
    running.stop()
