"""A consumer group the embedded broker left stuck is noticed and reset by the supervisor (crmsync/run.py
`Supervisor._unstick_groups`). Found by bench/chaos.py --disasters: the streams crashed while PostgreSQL
restarted, left their group politely while the group was rebalancing, and Tansu 0.6 then kept every later member
waiting for its partitions forever — no change was decided again, silently.

The first test shows the broker's behaviour on its own (so a Tansu that fixes it makes it fail, and the cure can
go); the second makes the same thing happen to the streams of a running pipeline and checks an edit still
arrives."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from confluent_kafka import Consumer

from crmsync import kafka, names, pg, topics
from crmsync.observability import WAITING_FOR_GROUP
from tests.pipeline import contacts_pipeline
from tests.waiting import wait_for

# kills processes and servers on timing: run alone, after the parallel part of `make test` (Makefile)
pytestmark = pytest.mark.alone


def _member(bootstrap: str, group: str, topic_names: list[str]) -> tuple[Consumer, list[str]]:
    """A consumer of `group` that notes its assignments ("assigned") and revocations ("revoked")."""
    events: list[str] = []
    consumer = Consumer({**kafka.client_config(bootstrap), "group.id": group, "enable.auto.commit": False,
                         "session.timeout.ms": 1000, "heartbeat.interval.ms": 300})
    consumer.subscribe(topic_names, on_assign=lambda *_: events.append("assigned"),
                       on_revoke=lambda *_: events.append("revoked"))
    return consumer, events


def _poll_until(consumers: list[Consumer], done: Callable[[], Any], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for consumer in consumers:
            consumer.poll(0.05)
        if done():
            return True
    return False


def _waits_for_partitions(port: int) -> bool:
    try:
        return WAITING_FOR_GROUP in httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).json()["checks"]["working"]
    except (httpx.HTTPError, ValueError, KeyError):
        return False


def test_the_embedded_broker_strands_a_group_whose_member_leaves_during_a_rebalance(endpoints):
    bootstrap, topic, group = endpoints.bootstrap_servers, f"stuck-{os.getpid()}", f"stuck-{time.time_ns()}"
    kafka.ensure_topics(bootstrap, [topic])
    first, first_events = _member(bootstrap, group, [topic])
    assert _poll_until([first], lambda: "assigned" in first_events, 30)
    second, second_events = _member(bootstrap, group, [topic])
    _poll_until([first, second], lambda: False, 0.5)  # the second is joining: the group rebalances
    try:
        first.close()  # a polite leave in the middle of it
        assert not _poll_until([second], lambda: "assigned" in second_events, 10), "the group was not stuck"
        kafka.delete_group(bootstrap, group)  # the supervisor's cure
        assert _poll_until([second], lambda: "assigned" in second_events, 20)
    finally:
        second.close()


def test_the_supervisor_resets_a_stuck_streams_group_and_the_sync_goes_on(tmp_path: Path) -> None:
    with contacts_pipeline(tmp_path / "state", contacts=20, recipients=20, shared=20) as world:
        supervisor, dsn = world.supervisor, world.found.campaign_dsn
        supervisor.start()
        wait_for(world.converged, 240, "the initial sync", supervisor, every=1)
        streams = supervisor.children["streams"]
        # The streams die (no leave: SIGKILL) and a stranger takes their group before they come back.
        os.kill(streams.pid, signal.SIGKILL)
        streams.wait()
        mapping = world.settings.mappings[0]
        changes = [topics.changes("crm", mapping.account, mapping.crm_object),
                   topics.changes("campaign", world.settings.campaign.name, mapping.campaign_table)]
        stranger, events = _member(world.found.bootstrap_servers, names.STREAMS_GROUP, changes)
        try:
            assert _poll_until([stranger], lambda: "assigned" in events, 30)
            # the streams start again (after the supervisor's restart delay) and join: the group rebalances
            assert _poll_until([stranger], lambda: "streams" in supervisor.check(), 10)
            assert _poll_until([stranger], lambda: _waits_for_partitions(supervisor.metrics_ports["streams"]), 60)
            _poll_until([stranger], lambda: False, 1)
        finally:
            stranger.close()  # it leaves politely in the middle of the rebalance: Tansu strands the group

        with pg.connect(dsn, autocommit=True) as conn:
            key, crm_id = conn.execute("SELECT id, crm_id FROM recipients WHERE crm_id IS NOT NULL ORDER BY id "
                                       "LIMIT 1").fetchone()
            conn.execute("UPDATE recipients SET city = 'after the stuck group' WHERE id = %s", (key,))
        wait_for(lambda: world.client.call("get", lambda sf: sf.Contact.get(crm_id))["MailingCity"]
                 == "after the stuck group", 120, "the edit to reach the CRM", supervisor, every=1)
        assert supervisor.groups_reset == [names.STREAMS_GROUP]
