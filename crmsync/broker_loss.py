"""A broker that lost its memory, noticed so the pipeline can be repaired without a human.

The embedded broker (Tansu, crmsync/infra.py) keeps everything in memory: when it restarts, every topic, every
message not consumed yet and every consumer group's committed offsets are gone (a real Kafka can lose them too:
a cluster rebuilt, topics deleted). What crmsync keeps in PostgreSQL survives — the poller's cursors, capture's
replication slot, the sync state, the rejects ledger, the deferred changes — and that is what makes the loss
silent: every source's position says "published", so nothing is published again, and whatever was still on the
topics (changes not decided yet, commands not applied yet) is never seen. Measured before this module: after a
restart of the embedded broker, no edit on either side arrived any more, and nothing said so (the services
never created their topics again).

Detection — the *epoch marker*: row `broker:epoch` of `crmsync.checkpoints` holds an id, and the broker holds an
empty topic named after it (`crmsync.epoch.<id>`, crmsync/topics.py). `check_epoch` compares them:

    no row yet                        "first": a first start; a marker is made
    the broker has the row's topic    "same":  the broker kept its memory
    it does not                       "lost":  a new marker is made, and the caller recovers the pipeline

Recovery is the supervisor's (`crmsync run`, crmsync/run.py): every service is restarted, so each creates its
topics again and joins its group at the start of the (empty) topics instead of carrying a position the new
broker never gave it; once they all answer ready, one drift-repair pass (crmsync/drift.py, `crmsync reconcile`)
compares both sides record by record and re-publishes what diverged — what the lost changes and commands would
have done — as ordinary changes, decided by the streams under the usual rules.
"""
from __future__ import annotations

import logging
import uuid
from typing import Literal

from confluent_kafka.admin import AdminClient
from psycopg.types.json import Jsonb

from crmsync import kafka, pg, topics

log = logging.getLogger("crmsync.broker_loss")

Verdict = Literal["first", "same", "lost"]
EPOCH_CHECKPOINT = "broker:epoch"
_EPOCH_LOCK = 7_400_552  # advisory-lock id: one check decides at a time


def check_epoch(bootstrap_servers: str, dsn: str, timeout: float = 5.0) -> Verdict:
    """Compare the broker's epoch marker with the one stored in PostgreSQL; make a new one unless "same".
    Raises when the broker or the database cannot be reached: no verdict then."""
    admin = AdminClient(kafka.client_config(bootstrap_servers))
    with pg.connect(dsn, application="crmsync-broker-watch") as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_EPOCH_LOCK,))
        row = conn.execute("SELECT position FROM crmsync.checkpoints WHERE name = %s", (EPOCH_CHECKPOINT,)).fetchone()
        known = (row[0] or {}).get("epoch") if row else None
        present = set(admin.list_topics(timeout=timeout).topics)
        if known is not None and topics.epoch(known) in present:
            return "same"
        epoch = uuid.uuid4().hex
        kafka.ensure_topics(bootstrap_servers, [topics.epoch(epoch)], partitions=1)
        conn.execute("INSERT INTO crmsync.checkpoints (name, position, updated_at) VALUES (%s, %s, now()) "
                     "ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()",
                     (EPOCH_CHECKPOINT, Jsonb({"epoch": epoch, "previous": known})))
    return "first" if known is None else "lost"
