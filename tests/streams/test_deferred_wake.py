"""A change deferred until its parent is in the CRM (or on its way there) is due again the moment a batch links
(or sends) that parent, not after its backoff (issue 16: the Campaign → CRM backfill waited on the timer — 2, 4, 8, then every 10 s — for each
contact whose organisation, and each purchase whose contact, had just been written to the CRM and read back).

Real PostgreSQL and broker, the streams' own batch handlers (one per side), no poller: the CRM side's changes
are built as the poller would publish them."""
from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from crmsync import kafka, names, pg, topics
from crmsync.envelope import crm_change
from crmsync.infra import Endpoints
from streams.app import BatchHandler, CrmReadiness
from tests.streams.changes import ACCOUNT, campaign


def _crm_first_read_done(dsn: str) -> None:
    """The CRM's first read of every object counts as decided (matching needs it before a new row is sent)."""
    with pg.connect(dsn, autocommit=True) as conn:
        for obj in ("Account", "Contact", "Opportunity"):
            conn.execute("INSERT INTO crmsync.checkpoints (name, position) VALUES (%s, '{\"snapshot_done\": true}')",
                         (names.poller_checkpoint(ACCOUNT, obj),))


def _deferred(dsn: str) -> list[tuple]:
    with pg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT array_agg(p.parent), d.next_retry_at <= now() FROM crmsync.deferred_changes d "
                            "JOIN crmsync.deferred_parents p ON p.change_id = d.id GROUP BY d.id").fetchall()


def _due_deferred(handler: BatchHandler, dsn: str, side_topic: str) -> int:
    with pg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE crmsync.deferred_changes SET kafka_partition = 0")
    return handler.decide_due_deferred([(side_topic, 0)])


def _organisation(dsn: str, campaign_side: BatchHandler) -> int:
    with pg.connect(dsn, autocommit=True) as conn:
        org = conn.execute("INSERT INTO organisations (name) VALUES ('Acme') RETURNING id").fetchone()[0]
    organisation = campaign("c", org, "2026-01-04T10:00:00Z", {"id": org, "name": "Acme"})
    organisation.object = "organisations"
    created = campaign_side.handle([organisation])
    assert [(c.action, c.object) for c in created.commands] == [("upsert", "Account")]
    assert created.sent == [f"accounts:{org}"]
    return org


def _contact_read_back(crm_id: str, key: int, person: dict, account_id: str, *, ours: bool):
    change = crm_change(ACCOUNT, "Contact", "c", crm_id, "2026-01-04T10:00:02.000+0000", "2026-01-04T10:00:02Z",
                        after={"Id": crm_id, "FirstName": person["first_name"], "LastName": person["last_name"],
                               "Email": person["email"], "AccountId": account_id, "Campaign_Key__c": str(key)})
    change.origin = "crmsync" if ours else None  # a change event of our own write, or a polled read
    return change


def _agreed(dsn: str, key: int) -> tuple[dict, dict]:
    with pg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT agreed, pending FROM crmsync.sync_state WHERE mapping = 'contacts' "
                            "AND campaign_key = %s", (key,)).fetchone()


def test_a_child_goes_with_its_parents_external_id_and_its_read_back_is_recognised(decide, endpoints):
    """Salesforce resolves a parent given by external id: a contact whose organisation's create is on its way
    is sent at once with it (AccountId as {"$ref": …Campaign_Key__c}), not parked until the organisation is read
    back. Its read-back, carrying the Account id Salesforce resolved, can come before the organisation's: the
    create event of our own write is taken as the agreement at once; a polled read (a user may have edited the
    record since) waits for the organisation's link, woken by it, then is recognised as our write. Neither sends
    anything back."""
    _crm_first_read_done(decide.dsn)
    found = Endpoints(endpoints.bootstrap_servers, decide.dsn)
    campaign_side = BatchHandler(decide.settings, found, "campaign")
    crm_side = BatchHandler(decide.settings, found, "crm")
    try:
        org = _organisation(decide.dsn, campaign_side)
        people = {key: {"id": key, "email": f"p{key}@example.com", "first_name": "Wo", "last_name": f"Ke {key}",
                        "organisation_id": org} for key in (7001, 7003)}
        sent = campaign_side.handle([campaign("c", key, "2026-01-04T10:00:01Z", person)
                                     for key, person in people.items()], {})
        assert sent.deferred == []
        assert [(c.object, c.match) for c in sent.commands] == [("Contact", {"Campaign_Key__c": str(key)})
                                                               for key in people]
        assert {str(c.values["AccountId"]) for c in sent.commands} == {str(
            {"$ref": {"object": "Account", "external_id": {"Campaign_Key__c": str(org)}}})}

        event = crm_side.handle([_contact_read_back("003EVENT", 7001, people[7001], "001WAKE", ours=True)])
        assert (event.commands, event.deferred) == ([], [])
        agreed, pending = _agreed(decide.dsn, 7001)
        assert agreed["organisation_id"] == "001WAKE" and not pending.get("crm")

        polled = crm_side.handle([_contact_read_back("003POLL", 7003, people[7003], "001WAKE", ours=False)])
        assert polled.commands == []
        assert [d.waiting_for for d in polled.deferred] == [(f"accounts:{org}",)]
        assert _deferred(decide.dsn) == [([f"accounts:{org}"], False)]  # parked on its backoff

        # the Account the writer created, read back from the CRM: it carries the organisation's Campaign key
        read_back = crm_change(ACCOUNT, "Account", "c", "001WAKE", "2026-01-04T10:00:02.000+0000",
                               "2026-01-04T10:00:02Z", after={"Id": "001WAKE", "Name": "Acme",
                                                              "Campaign_Key__c": str(org)})
        linking = crm_side.handle([read_back])
        assert f"accounts:{org}" in linking.linked
        assert _deferred(decide.dsn) == [([f"accounts:{org}"], True)]  # due now

        assert _due_deferred(crm_side, decide.dsn, topics.changes("crm", ACCOUNT, "Contact")) == 1
        assert _deferred(decide.dsn) == []
        with pg.connect(decide.dsn, autocommit=True) as conn:  # its parents went with it
            assert conn.execute("SELECT count(*) FROM crmsync.deferred_parents").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM crmsync.conflicts").fetchone()[0] == 0
        agreed, pending = _agreed(decide.dsn, 7003)
        assert agreed["organisation_id"] == "001WAKE" and not pending.get("crm")  # an echo: nothing sent back
    finally:
        campaign_side.close()
        crm_side.close()


def test_sending_a_parent_wakes_the_changes_waiting_for_it(decide, endpoints):
    """A contact decided before its organisation waits for it; deciding the organisation (its create goes to
    the CRM) makes the contact due at once, and it then goes with the organisation's external id."""
    _crm_first_read_done(decide.dsn)
    campaign_side = BatchHandler(decide.settings, Endpoints(endpoints.bootstrap_servers, decide.dsn), "campaign")
    try:
        with pg.connect(decide.dsn, autocommit=True) as conn:
            org = conn.execute("SELECT nextval(pg_get_serial_sequence('organisations', 'id'))").fetchone()[0] + 1
        person = {"id": 7002, "email": "ea@example.com", "first_name": "E", "last_name": "A", "organisation_id": org}
        waiting = campaign_side.handle([campaign("c", 7002, "2026-01-04T10:00:01Z", person)], {})
        assert [d.waiting_for for d in waiting.deferred] == [(f"accounts:{org}",)]
        assert _deferred(decide.dsn) == [([f"accounts:{org}"], False)]  # parked on its backoff

        assert _organisation(decide.dsn, campaign_side) == org
        assert _deferred(decide.dsn) == [([f"accounts:{org}"], True)]  # due now

        topic = topics.changes("campaign", "campaign", "recipients")
        assert _due_deferred(campaign_side, decide.dsn, topic) == 1
        assert _deferred(decide.dsn) == []
        with pg.connect(decide.dsn, autocommit=True) as conn:
            sent = conn.execute("SELECT agreed FROM crmsync.sync_state WHERE mapping = 'contacts' "
                                "AND campaign_key = 7002").fetchone()[0]
        assert sent["organisation_id"] == {"campaign_key": org}  # agreed by its Campaign key until it is linked
    finally:
        campaign_side.close()


def test_the_crms_first_read_wakes_the_changes_waiting_for_it(decide, endpoints):
    """A new Campaign row waits until the CRM's first read of its mapping is decided (matching needs it); it is
    due again as soon as that read is, not after its backoff (2, 4, 8, then every 10 s). Deferred again for
    another reason, it waits for that reason only."""
    campaign_side = BatchHandler(decide.settings, Endpoints(endpoints.bootstrap_servers, decide.dsn), "campaign")
    try:
        person = {"id": 7101, "email": "early@example.com", "first_name": "Ear", "last_name": "Ly",
                  "organisation_id": 4242}  # an organisation not in the CRM either
        waiting = campaign_side.handle([campaign("c", 7101, "2026-01-04T11:00:00Z", person)], {})
        assert [d.waiting_for for d in waiting.deferred] == [("crm-read:contacts",)]
        assert _deferred(decide.dsn) == [(["crm-read:contacts"], False)]

        topic = topics.changes("campaign", "campaign", "recipients")
        with pg.connect(decide.dsn, autocommit=True) as conn:
            # as after a few looks: its backoff is now 10 s
            conn.execute("UPDATE crmsync.deferred_changes SET kafka_partition = 0, "
                         "next_retry_at = now() + interval '10 seconds'")
        assert campaign_side.decide_due_deferred([(topic, 0)]) == 0  # the CRM's first read is not done: it waits
        _crm_first_read_done(decide.dsn)
        time.sleep(2.1)  # (the readiness check is repeated at most every 2 s)
        assert campaign_side.decide_due_deferred([(topic, 0)]) == 1  # due at once, decided again…
        # …and now waits for its organisation only, on its backoff: the first read, decided, wakes it no more
        assert _deferred(decide.dsn) == [(["accounts:4242"], False)]
    finally:
        campaign_side.close()


def test_a_decided_first_read_is_remembered_across_a_restart(decide, endpoints):
    """Campaign changes wait for the CRM's first read to be decided: the poller's snapshot done, then the streams'
    group caught up with its topic. Once decided, that is stored: a restarted worker whose group lags behind steady
    CRM traffic does not wait again (it would hold the Campaign side until a quiet moment) — while the poller's
    checkpoint still says its snapshot is done."""
    unique = uuid.uuid4().hex[:8]
    mapping = next(m for m in decide.settings.mappings if m.crm_object == "Contact")
    mapping = mapping.model_copy(update={"name": f"contacts_{unique}", "account": f"acct_{unique}"})
    bootstrap = endpoints.bootstrap_servers
    topic = topics.changes("crm", mapping.account, mapping.crm_object)
    kafka.ensure_topics(bootstrap, [topic], 1, 1)
    producer = kafka.producer(bootstrap)

    def crm_traffic() -> None:
        producer.produce(topic, b"{}", key=b"k")
        producer.flush(10)

    def ask(readiness: CrmReadiness) -> bool:
        readiness.checked_at.clear()  # (it looks at most every 2 s)
        with conn.transaction():
            return readiness(mapping)

    crm_traffic()
    with pg.connect(decide.dsn) as conn:
        first = CrmReadiness(conn, bootstrap)
        assert not ask(first)  # the poller's snapshot is not done
        with conn.transaction():
            conn.execute("INSERT INTO crmsync.checkpoints (name, position) VALUES (%s, '{\"snapshot_done\": true}')",
                         (names.poller_checkpoint(mapping.account, mapping.crm_object),))
        assert not ask(first)  # done, but the streams have not consumed it
        group = Consumer(kafka.client_config(bootstrap, {"group.id": names.STREAMS_GROUP}))
        group.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
        group.close()
        assert ask(first)
        crm_traffic()  # steady CRM traffic: the group lags again
        assert ask(CrmReadiness(conn, bootstrap))  # a restarted worker: ready at once
        with conn.transaction():
            conn.execute("UPDATE crmsync.checkpoints SET position = '{\"snapshot_done\": false}' WHERE name = %s",
                         (names.poller_checkpoint(mapping.account, mapping.crm_object),))
        assert not ask(CrmReadiness(conn, bootstrap))  # the poller reads everything again: wait for it…
        with conn.transaction():
            conn.execute("UPDATE crmsync.checkpoints SET position = '{\"snapshot_done\": true}' WHERE name = %s",
                         (names.poller_checkpoint(mapping.account, mapping.crm_object),))
        assert not ask(CrmReadiness(conn, bootstrap))  # …and for the streams to have consumed what it read
