"""The fast path of the stream processors: a batch's common cases, decided together.

A backfill and a steady flow of edits are almost all one of three cases, for which the general rules of
MappingBatch (streams/reconcile.py) collapse to a few lines:

- **a new CRM record that matches no Campaign row** (a CRM → Campaign backfill): its values become the
  agreement, a `create` command carries the Campaign key allocated for it;
- **a new Campaign row that duplicates no linked record** (a Campaign → CRM backfill): its values become the
  agreement, an upsert by the Campaign key creates the CRM record; one whose parent is not in the CRM yet (a
  backfill's contacts, before their accounts are linked) goes with the parent's external id where the CRM
  resolves one and the parent's create is on its way, or is parked for that parent, as the per-record path does;
- **an edit of a linked record that nobody raced** (no write of ours in flight to that side, the other side
  did not edit an edited field later, no owner of a field on the other side, no parent still missing): the
  fields it changed become agreed and go to the other side, with compare-and-set on what they held.

They are recognised here from what the batch already loaded in a few set-based statements (the links of the
whole batch, its match candidates, the keys allocated for it, its duplicates' twins, its parents: one
statement each, MappingBatch.run), and decided without the per-record machinery's detours; a record with
more than one change in the batch, and every other case (a match by email, a conflict, a delete, a partial
change, an edit that waits), goes to the per-record path unchanged. The state of the whole batch, fast and per-record, is
written by one statement per kind (MappingBatch._save_links).

Invariant (tests/streams/test_fast_path.py compares both ways on randomized batches): the decisions — apply
commands, conflicts, deferred changes, invalid values, duplicates, the count of skipped changes and the sync
state written — are exactly those of the per-record path.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from crmsync.envelope import ApplyCommand, Change
from crmsync.values import match_key

if TYPE_CHECKING:
    from streams.reconcile import Link, MappingBatch


class FastPath:
    def __init__(self, batch: "MappingBatch") -> None:
        self.b = batch
        self.m = batch.m
        self.references = {f.campaign for f in batch.m.fields if f.reference}
        self.owners = {f.campaign: f.owner for f in batch.m.fields if f.owner}
        # a new Campaign row made for a CRM record: what its create command carries and expects empty
        self.into_campaign = [(f.campaign, batch.parents.get(f.campaign)) for f in batch.m.fields
                              if f.campaign in batch.allowed_from["crm"]]
        self.expect_empty = {f.campaign for f in batch.m.fields  # (fields a Campaign user could have filled)
                             if not f.reference and f.campaign in batch.allowed_from["campaign"]}

    def take(self, changes: list[Change]) -> list[Change]:
        """Decide the changes of the common cases; return the others, in order, for the per-record path."""
        once = Counter(_record(c) for c in changes)
        return [c for c in changes if once[_record(c)] > 1 or not self._decided(c)]

    def _decided(self, change: Change) -> bool:
        if change.op == "d" or change.partial or change.position.get("missing") or not self.b._in_filter(change):
            return False  # deletes, partial changes (only the touched fields: never a new record) and repair
            # reads of records the other side never received, per record
        link = self.b._find_link_quietly(change)
        if link is None:
            case = "new CRM record" if change.side == "crm" else "new Campaign row"
            decided = self._new_crm_record(change) if change.side == "crm" else self._new_campaign_row(change)
        else:
            case, decided = "unraced edit", self._unraced_edit(change, link)
        if decided:
            self.b.out.fast[case] += 1
        return decided

    # -- new records ------------------------------------------------------------------------------------------
    def _new_crm_record(self, change: Change) -> bool:
        b, m = self.b, self.m
        campaign_key = b.key_for.get(change.id)
        key = match_key(b._match_value(change))
        if campaign_key is None or change.key["id"] in b.linked_rows or b.match_rows.get(key or ""):
            return False
        from streams.reconcile import Link

        values = b._values(change)
        ts = b._change_ts(change)
        link = b._remember(Link(mapping=m.name, crm_id=change.key["id"], campaign_key=campaign_key, match_key=key,
                                agreed=dict(values), field_meta={c: ["crm", ts] for c in values}, dirty=True,
                                inserting=True, crm_modstamp=f"{change.position['ts']}|{change.id}"
                                if change.position.get("ts") else None))
        payload = {column: values[column] if parent is None or values[column] is None else  # (b._to_campaign)
                   {"$ref": {"table": parent.campaign_table, "crm_account": parent.account, "crm_id": values[column]}}
                   for column, parent in self.into_campaign if column in values}
        expect = {column: None for column in payload if column in self.expect_empty}
        command = ApplyCommand(
            id=f"{change.id}>{m.name}>campaign", side="campaign", target=b.r.campaign_name, object=m.campaign_table,
            action="create", key={"id": campaign_key}, values=payload, cause=change.id, source_ts=change.source_ts,
            match={"crm_account": m.account, "crm_object": m.crm_object, "crm_id": link.crm_id},
            expect=expect or None, created_ts=b.now, mapping=m.name)
        b.out.commands.append(command)
        b.emitted[("campaign", id(link))] = command
        return True

    def _new_campaign_row(self, change: Change) -> bool:
        b, m = self.b, self.m
        if m.direction == "import" or not b.r.crm_ready(m):
            return False
        key = match_key(b._match_value(change))
        if b._linked_twin(key) is not None:
            return False
        values = b._values(change)
        if b._must_wait_for_parents(values):
            b._wait_for_parents(change, values)  # (as the per-record path: a twin is looked for once it is woken)
            return True
        from streams.reconcile import Link

        link = b._remember(Link(mapping=m.name, campaign_key=int(change.key["id"]), match_key=key, dirty=True))
        b._accept_all(link, values, "campaign", b._change_ts(change))
        b._note_position(change, link)
        b._send(link, "crm", values, change, create=True)
        return True

    # -- edits ------------------------------------------------------------------------------------------------
    def _unraced_edit(self, change: Change, link: "Link") -> bool:
        b, side = self.b, change.side
        other = "campaign" if side == "crm" else "crm"
        if (link.deleted or link.pending.get(side) or not self._known(change, link) or b._is_stale(change, link)
                or any(isinstance(link.agreed.get(c), dict) for c in self.references)):
            return False  # (a parent agreed by its external id is resolved per record first)
        mark = len(b.out.invalid)
        values = b._values(change)
        before = b._values(replace(change, after=change.before), report=False) if change.before else None
        change_ts = b._change_ts(change)
        edited = {c: v for c, v in values.items() if v != link.agreed.get(c)
                  and not (before is not None and c in before and before[c] == v)}
        if any(self._raced(link, column, side, change_ts) for column in edited) or (
                side == "campaign" and (b._waits_for_parent(link, values, before) or self._writing(link, values))):
            del b.out.invalid[mark:]
            return False
        bases = dict(link.agreed)
        for column, value in edited.items():
            link.agreed[column] = value
            link.field_meta[column] = [side, change_ts]
        b._note_position(change, link)
        if edited:
            b._send(link, other, edited, change, bases=bases)
        else:
            b.out.skipped += 1
        return True

    @staticmethod
    def _writing(link: "Link", values: dict) -> bool:
        """A write of ours to one of these Campaign fields is remembered (its base, for repair reads): the
        per-record path decides, and forgets it, as it must."""
        from streams.reconcile import CAMPAIGN_BASES

        bases = link.pending.get(CAMPAIGN_BASES) or {}
        return any(column in bases for column in values)

    def _raced(self, link: "Link", column: str, side: str, change_ts: float) -> bool:
        """Whether the per-record path would see a conflict for this field (or hand it to its owner)."""
        owner = self.owners.get(column)
        if owner is not None and owner != side:
            return True
        meta = link.field_meta.get(column) or [None, 0.0]
        return meta[0] not in (None, side) and float(meta[1] or 0.0) > change_ts

    @staticmethod
    def _known(change: Change, link: "Link") -> bool:
        """The link already names this very record (a change that teaches it its other id, or that reached it
        through the other side's id, is decided per record)."""
        if change.side == "crm":
            return link.crm_id == change.key["id"]
        return link.campaign_key is not None and link.campaign_key == int(change.key["id"])


def _record(change: Change) -> Any:
    return tuple(sorted(change.key.items()))
