"""The connector conformance suite's fixtures: every registered connector, against its own sandbox.

`crm` is parametrized over every connector the registry knows (entry points) plus the in-memory connector this
suite defines (tests/connectors/memory.py). Each needs a `Harness` (tests/connectors/harnesses.py): the few
things a test must do to a CRM from outside the interface — hold its clock so writes share a modification
time, switch on its rate-limit answers, name a value it refuses. A registered connector without a harness
fails the suite (it is never skipped).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from crmsync import connectors
from crmsync.connectors import AccountBase, Client, Connector, RunningSandbox
from tests.connectors import memory
from tests.connectors.harnesses import HARNESSES, Harness

SEEDED = 30  # contacts in each sandbox (pages of the change sources are smaller, so a snapshot spans pages)


def connector_types() -> list[str]:
    connectors.register(memory.CONNECTOR)
    return connectors.types()


def source_cases(push_only: bool = False) -> list[Any]:
    """(connector type, change-source mode) for every mode every connector offers (None: a connector with one
    source); `push_only`: only the modes after the first, where the CRM pushes changes (Salesforce's cdc)."""
    cases = []
    for type_name in connector_types():
        modes = connectors.source_modes(connectors.connector(type_name))
        chosen = modes[1:] if push_only else (modes or (None,))
        cases += [pytest.param(type_name, mode, id=f"{type_name}-{mode}" if mode else type_name) for mode in chosen]
    return cases


@dataclass
class Crm:
    """One connector under test, with its running sandbox and a logged-in client."""

    type: str
    connector: Connector
    harness: Harness
    running: RunningSandbox
    account: AccountBase
    client: Client

    @property
    def contacts(self) -> str:
        return self.connector.objects["contacts"]

    def mapping(self) -> dict[str, Any]:
        """The shipped contacts mapping (recipients ⇄ the CRM's contacts)."""
        return next(m for m in self.connector.default_mappings("conformance") if m["campaign_table"] == "recipients")

    def field(self, campaign_column: str) -> str:
        """The CRM field the shipped mapping puts a Campaign column in."""
        return next(f["crm"] for f in self.mapping()["fields"] if f["campaign"] == campaign_column)

    def values(self, **by_column: Any) -> dict[str, Any]:
        return {self.field(column): value for column, value in by_column.items()}

    def source_options(self, mode: str | None) -> dict[str, Any]:
        """What `change_source` gets for `mode` (None: nothing, the connector chooses), with the harness's
        settings for it (a push source's quiet time, for instance)."""
        if mode is None:
            return {}
        return {"mode": mode, **getattr(self.harness, "source_options", lambda _mode: {})(mode)}

    def source(self, mode: str | None = None) -> Any:
        """The contacts change source in `mode`."""
        return self.connector.change_source(self.client, self.contacts, **self.source_options(mode))


@pytest.fixture(scope="module", params=connector_types())
def crm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crm]:
    type_name = request.param
    connector = connectors.connector(type_name)
    harness = HARNESSES.get(type_name)
    if harness is None:
        pytest.fail(f"connector {type_name!r} is registered but has no harness in tests/connectors/harnesses.py")
    kit = connector.sandbox()
    assert kit is not None, f"connector {type_name!r} ships no sandbox: the conformance suite runs against one"
    state: Path = tmp_path_factory.mktemp(f"conformance-{type_name}")
    running = kit.start(state, seed_contacts=SEEDED, log_file=state / "sandbox.log")
    try:
        account = connector.account_model.model_validate(running.account)
        client = connector.client(f"conformance_{type_name}", account)
        yield Crm(type_name, connector, harness, running, account, client)
        client.close()
    finally:
        if running.process is not None:
            from crmsync import process

            process.stop(running.process)
