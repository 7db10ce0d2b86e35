"""The sandbox's change events: sequence numbers inside one transaction, with a rolled-back write between."""
from __future__ import annotations

from pathlib import Path

from sandboxes.salesforce.app import create_sandbox
from sandboxes.salesforce.settings import DEFAULT_ADMIN_TOKEN, DEFAULT_CREDENTIALS


def test_sequence_numbers_stay_consecutive_when_a_write_in_the_transaction_is_rolled_back(tmp_path: Path) -> None:
    """Salesforce numbers the events of one transaction 1, 2, 3 …: a write rolled back in the middle (its
    savepoint, as a failed row of a Bulk job or of an allOrNone=false collection) takes its event and its number
    with it. The change log keeps the count as it goes (counting per event was quadratic in a Bulk job's size)
    and must count again after such a rollback."""
    sandbox = create_sandbox(tmp_path, DEFAULT_CREDENTIALS, DEFAULT_ADMIN_TOKEN, cdc_objects=["Lead"])
    store, changes = sandbox.store, sandbox.changes
    head = changes.last_replay_id()
    with changes.transaction("", sandbox.api_user_id):
        store.create("Lead", {"LastName": "Kept 1", "Company": "Acme"}, user_id=sandbox.api_user_id)
        with store.atomic() as tx:
            store.create("Lead", {"LastName": "Gone", "Company": "Acme"}, user_id=sandbox.api_user_id)
            store.create("Lead", {"LastName": "Gone too", "Company": "Acme"}, user_id=sandbox.api_user_id)
            tx.rollback()
        for n in (2, 3):
            store.create("Lead", {"LastName": f"Kept {n}", "Company": "Acme"}, user_id=sandbox.api_user_id)
    events, _ = changes.events_after(head, {"Lead"}, 100)
    store.conn.close()
    assert [e.change_type for e in events] == ["CREATE"] * 3
    assert len({e.transaction_key for e in events}) == 1
    assert [e.sequence for e in events] == [1, 2, 3]
