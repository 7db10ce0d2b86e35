"""The CRM API budget, the same for every CRM: the CRM poller and the CRM writer publish what the connector's
client reports (`client.usage()`: Salesforce's daily requests from Sforce-Limit-Info, Dataverse's 5-minute
service-protection window from the x-ms-ratelimit-* headers, Oracle's per-minute REST window) as
crmsync_crm_api_usage / _limit / _window_info, each client counts its requests in crmsync_crm_api_calls_total,
and the dashboard's sampler shows them per account, read from the services' /metrics like Prometheus does."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client import REGISTRY

from crmsync import observability
from crmsync.config import Settings
from crmsync.dashboard.sampler import Sampler
from crmsync.envelope import ApplyCommand
from crmsync.infra import Endpoints
from services.crm_poller import service as poller
from services.crm_writer import service as writer
from tests.crms import CrmUnderTest, start_crm

WINDOWS = {"salesforce": "day", "dynamics": "5 minutes", "oracle": "minute"}


@pytest.fixture(scope="module", params=sorted(WINDOWS))
def crm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrmUnderTest]:
    yield from start_crm(request.param, tmp_path_factory.mktemp(f"budget-{request.param}"), seed_contacts=5)


@pytest.fixture
def metrics_url() -> Iterator[str]:
    server = observability.serve("test-budget", 0)
    assert server is not None
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def calls(account: str) -> float:
    return sum(s.value for metric in REGISTRY.collect() if metric.name == "crmsync_crm_api_calls"
               for s in metric.samples if s.name == "crmsync_crm_api_calls_total" and s.labels["account"] == account)


def test_poller_and_writer_publish_the_budget_the_crm_reports(crm: CrmUnderTest, endpoints: Endpoints,
                                                               campaign_db: tuple[str, str], tmp_path: Path,
                                                               metrics_url: str) -> None:
    account = f"b{uuid.uuid4().hex[:8]}"  # metrics of this account come from this test only
    contacts = crm.connector.objects["contacts"]
    settings = Settings.model_validate({
        "state_dir": str(tmp_path / "state"), "kafka": {"bootstrap_servers": endpoints.bootstrap_servers},
        "campaign": {"dsn": campaign_db[0], "name": campaign_db[1]}, "accounts": {account: crm.running.account},
        "mappings": []})
    found = Endpoints(endpoints.bootstrap_servers, campaign_db[0])
    assert value("crmsync_crm_api_limit", account=account) is None

    polling = poller.build(settings, found, account, [contacts])
    try:
        polling.poll_once()
        first = polling.client.usage()
    finally:
        polling.close()
    assert first.limit is not None and first.remaining is not None, f"{crm.type} reported no budget"
    assert first.window == WINDOWS[crm.type]
    assert value("crmsync_crm_api_limit", account=account) == first.limit
    assert value("crmsync_crm_api_usage", account=account) == first.limit - first.remaining
    assert value("crmsync_crm_api_window_info", account=account, window=first.window) == 1
    polled_calls = calls(account)
    assert polled_calls >= first.calls > 0

    writing = writer.build(settings, found, account, objects=[])
    try:
        create = ApplyCommand(id=f"budget:{uuid.uuid4().hex}", side="crm", target=account, object=contacts,
                              action="upsert", key=None, values={crm.field("last_name"): "Budget",
                                                                  crm.field("first_name"): "Api"},
                              match={crm.connector.default_external_id: uuid.uuid4().hex[:20]}, cause="test")
        result = writing.process([create])
        after = writing.client.usage()
    finally:
        writing.close()
    assert result.applied == 1
    assert value("crmsync_crm_api_usage", account=account) == after.limit - after.remaining
    assert calls(account) > polled_calls  # the writer's requests are counted too

    sampler = Sampler(settings, endpoints.bootstrap_servers, {"service": metrics_url})
    (shown,) = [row for row in sampler.sample_once()["api"] if row["account"] == account]
    assert shown == {"account": account, "window": WINDOWS[crm.type], "used": after.limit - after.remaining,
                     "limit": after.limit, "remaining": after.remaining, "calls": calls(account),
                     "budget": None, "projected": None}  # poll_once: no pacing, so no poller budget shown
