"""Helpers for the Campaign writer tests: command builders, a writer per test, a running service in a thread."""
from __future__ import annotations

import itertools
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import pytest

from crmsync import config, kafka, pg, topics
from crmsync.envelope import ApplyCommand, Reject, record_key
from crmsync.infra import Endpoints
from crmsync.rejects import RetryPolicy
from services.campaign_writer import service
from services.campaign_writer.service import CampaignWriter, WriterOptions

FAST_RETRY = RetryPolicy(initial_wait=0.2, max_wait=1.0, max_attempts=8, retrying_timeout=30)
FAST_OPTIONS = WriterOptions(retry_interval=0.2)
_ids = itertools.count(1)


def contact(crm_id: str, account: str = "acme") -> dict[str, str]:
    return {"crm_account": account, "crm_object": "Contact", "crm_id": crm_id}


def account(crm_id: str, account: str = "acme") -> dict[str, str]:
    return {"crm_account": account, "crm_object": "Account", "crm_id": crm_id}


def ref(crm_id: str, table: str = "organisations", account: str = "acme") -> dict[str, Any]:
    return {"$ref": {"table": table, "crm_account": account, "crm_id": crm_id}}


class Commands:
    """Builds ApplyCommands for one Campaign database, as a stream processor would."""

    def __init__(self, campaign: str) -> None:
        self.campaign = campaign

    def upsert(self, table: str, *, key: dict | None = None, match: dict | None = None, **values: Any) -> ApplyCommand:
        return ApplyCommand(id=f"cmd-{next(_ids)}-{uuid.uuid4().hex[:6]}", side="campaign", target=self.campaign,
                            object=table, action="upsert", key=key, values=values, cause="test", match=match,
                            source_ts=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def create(self, table: str, *, key: dict, match: dict, expect: dict | None = None, **values: Any) -> ApplyCommand:
        """A new CRM record's row, with the key the streams allocated (every field expected empty, as they send)."""
        return ApplyCommand(id=f"cmd-{next(_ids)}-{uuid.uuid4().hex[:6]}", side="campaign", target=self.campaign,
                            object=table, action="create", key=key, values=values, cause="test", match=match,
                            expect={name: None for name in values} if expect is None else expect,
                            source_ts=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def delete(self, table: str, *, key: dict | None = None, match: dict | None = None) -> ApplyCommand:
        return ApplyCommand(id=f"cmd-{next(_ids)}-{uuid.uuid4().hex[:6]}", side="campaign", target=self.campaign,
                            object=table, action="delete", key=key, values={}, cause="test", match=match)


@pytest.fixture
def commands(campaign_db) -> Commands:
    return Commands(campaign_db[1])


@pytest.fixture
def writer(endpoints: Endpoints, campaign_db) -> Iterator[CampaignWriter]:
    dsn, name = campaign_db
    made = CampaignWriter(dsn, endpoints.bootstrap_servers, name, policy=FAST_RETRY, options=FAST_OPTIONS)
    yield made
    made.close()


def rows(dsn: str, query: str, params: tuple = ()) -> list[tuple]:
    with pg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def ledger(dsn: str) -> dict[str, dict[str, Any]]:
    """The rejects ledger keyed by command id."""
    with pg.connect(dsn, autocommit=True) as conn:
        cur = pg.dict_cursor(conn)
        found = cur.execute("SELECT * FROM crmsync.rejects ORDER BY seq").fetchall()
    return {row["command_id"]: row for row in found}


def consume_rejects(bootstrap: str, campaign: str, until: Callable[[list[Reject]], bool],
                    timeout: float = 30) -> list[Reject]:
    consumer = kafka.consumer(bootstrap, f"test-{uuid.uuid4().hex}")
    consumer.subscribe([topics.rejects("campaign", campaign)])
    seen: list[Reject] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(seen):
            for message in consumer.consume(500, 0.2):
                if message.error() is None:
                    seen.append(Reject.from_json(message.value()))
    finally:
        consumer.close()
    return seen


def produce(bootstrap: str, commands: list[ApplyCommand]) -> None:
    """Publish commands to their apply topics, keyed by record like the stream processors."""
    producer = kafka.producer(bootstrap)
    tracker = kafka.DeliveryTracker()
    for command in commands:
        producer.produce(topics.apply(command.side, command.target, command.object), value=command.to_json(),
                         key=record_key(command.match or command.key or {}), on_delivery=tracker)
    kafka.flush_all(producer, tracker)


class RunningWriter:
    """The writer service (`service.run`) in a thread of the test process, with fast retries."""

    def __init__(self, endpoints: Endpoints, dsn: str, name: str, tables: list[str],
                 policy: RetryPolicy = FAST_RETRY) -> None:
        settings = config.Settings.model_validate({"campaign": {"name": name}})
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=service.run, args=(settings, Endpoints(endpoints.bootstrap_servers, dsn), tables),
            kwargs={"stop": self.stop, "policy": policy, "options": FAST_OPTIONS}, daemon=True)

    def __enter__(self) -> "RunningWriter":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the writer did not stop"
