"""A broker that loses its memory is noticed and repaired without a human (crmsync/broker_loss.py, the supervisor
in crmsync/run.py): before, after the embedded broker restarted nothing recreated the topics and no edit on
either side arrived any more, silently."""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from crmsync import broker_loss, infra, kafka, pg, topics
from crmsync.drift import repair_all
from tests.pipeline import contacts_pipeline
from tests.waiting import wait_for

# kills processes and servers on timing: run alone, after the parallel part of `make test` (Makefile)
pytestmark = pytest.mark.alone


def test_the_epoch_marker_tells_a_first_start_a_broker_that_remembers_and_one_that_forgot(endpoints, campaign_db):
    dsn, bootstrap = campaign_db[0], endpoints.bootstrap_servers
    assert broker_loss.check_epoch(bootstrap, dsn) == "first"
    assert broker_loss.check_epoch(bootstrap, dsn) == "same"
    with pg.connect(dsn) as conn:
        epoch = conn.execute("SELECT position->>'epoch' FROM crmsync.checkpoints WHERE name = %s",
                             (broker_loss.EPOCH_CHECKPOINT,)).fetchone()[0]
    admin = AdminClient(kafka.client_config(bootstrap))
    admin.delete_topics([topics.epoch(epoch)])[topics.epoch(epoch)].result()
    wait_for(lambda: topics.epoch(epoch) not in admin.list_topics(timeout=10).topics, 30, "the marker to be gone")
    assert broker_loss.check_epoch(bootstrap, dsn) == "lost"  # what a restarted memory-only broker looks like
    assert broker_loss.check_epoch(bootstrap, dsn) == "same"  # and the new marker holds


def test_the_pipeline_recovers_by_itself_from_a_broker_restart_that_lost_its_memory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with contacts_pipeline(state, contacts=60, recipients=60, shared=20) as world:
        supervisor, dsn, sf = world.supervisor, world.found.campaign_dsn, world.client
        supervisor.start()
        wait_for(world.converged, 240, "the initial sync", supervisor, every=1)
        # commands decided but not applied yet: the CRM writer is held while the streams decide ten edits
        writer = next(c for label, c in supervisor.children.items() if label.startswith("writer-crm"))
        writer.send_signal(signal.SIGSTOP)
        with pg.connect(dsn, autocommit=True) as conn:
            lost = [r[0] for r in conn.execute("SELECT id FROM recipients WHERE crm_id IS NOT NULL ORDER BY id LIMIT 10")]
            conn.execute("UPDATE recipients SET job_title = 'lost with the broker' WHERE id = ANY(%s)", (lost,))
            wait_for(lambda: conn.execute("SELECT count(*) FROM crmsync.sync_state WHERE campaign_key = ANY(%s) AND "
                                          "agreed->>'job_title' = 'lost with the broker'", (lost,)).fetchone()[0] == 10,
                     60, "the streams to decide the edits", every=0.5)
        broker = infra.EmbeddedBroker(state.resolve())
        os.kill(broker.status()["pid"], signal.SIGKILL)  # the broker dies; its memory goes with it
        crm_id = next(r["Id"] for page in sf.query_all_pages("SELECT Id FROM Contact ORDER BY Id DESC LIMIT 1")
                      for r in page)
        sf.call("update", lambda api: api.Contact.update(crm_id, {"Title": "edited while the broker was down"}))

        wait_for(lambda: supervisor.recoveries and supervisor.recoveries[-1].repaired_at, 120,
                 "the supervisor to notice the loss and repair", supervisor, every=0.5)
        wait_for(world.converged, 120, "both sides to agree again", supervisor, every=1)
        titles = [r["Title"] for page in sf.query_all_pages(
            "SELECT Title FROM Contact WHERE Title = 'lost with the broker'") for r in page]
        assert len(titles) == 10
        with pg.connect(dsn) as conn:
            assert conn.execute("SELECT job_title FROM recipients WHERE crm_id = %s",
                                (crm_id,)).fetchone()[0] == "edited while the broker was down"
        assert len(supervisor.recoveries) == 1

        # A pass that cannot reach the database (PostgreSQL restarting) says it did not repair the mapping, so
        # the supervisor repeats it: once it counted as done, and the broker's losses stayed lost.
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        unreachable = dataclasses.replace(world.found, campaign_dsn=f"postgresql://postgres@127.0.0.1:"
                                                                    f"{closed.getsockname()[1]}/campaign")
        try:
            attempt = repair_all(world.settings, unreachable, say=print)
        finally:
            closed.close()
        assert attempt.failed == ["contacts"] and not attempt.complete
