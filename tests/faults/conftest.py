"""The value pipeline the bad-input tests of record values share (test_bad_input_crm_values.py,
test_bad_input_campaign_values.py): every service of `crmsync run` as a process, the Salesforce sandbox, 30
contacts linked to 30 recipients, and two more mapped fields to hold numbers and short strings — a Salesforce
double `Score__c` ⇄ `recipients.score numeric(5,2)`, a Salesforce text `Code__c` ⇄ `recipients.code varchar(8)`.
Each case edits its own linked pair, so the cases never disturb each other."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pytest

from crmsync import config, pg
from crmsync.run import write_effective_config
from tests.connectors.harnesses import sandbox_admin
from tests.pipeline import World, contacts_pipeline
from tests.waiting import wait_for

EXTRA_FIELDS = [config.FieldMap(crm="Score__c", campaign="score"), config.FieldMap(crm="Code__c", campaign="code")]


@dataclass
class ValuePipeline:
    world: World
    pairs: list[tuple[str, int]]  # (CRM id, Campaign key) of linked records, one per case
    taken: Iterator[int] = field(default_factory=itertools.count)

    def pair(self) -> tuple[str, int]:
        return self.pairs[next(self.taken)]

    def crm(self, crm_id: str) -> dict[str, Any]:
        return self.world.client.call("get", lambda sf: sf.Contact.get(crm_id))

    def campaign(self, key: int) -> dict[str, Any]:
        with pg.connect(self.world.found.campaign_dsn) as conn:
            return dict(pg.dict_cursor(conn).execute("SELECT * FROM recipients WHERE id = %s", (key,)).fetchone())

    def rejects(self, crm_id: str, key: int) -> list[dict[str, Any]]:
        """Rejects of this record, whichever stage refused it."""
        with pg.connect(self.world.found.campaign_dsn) as conn:
            return [dict(r) for r in pg.dict_cursor(conn).execute(
                "SELECT stage, error_code, reason, status FROM crmsync.rejects WHERE record::text LIKE %s "
                "OR record->'key'->>'id' = %s OR record->'change'->'key'->>'id' = %s",
                (f'%"{crm_id}"%', str(key), str(key)))]

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        return wait_for(predicate, timeout, what, self.world.supervisor, every=0.5)


@pytest.fixture(scope="package")  # torn down when tests/faults is done, not at the end of the suite
def values(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValuePipeline]:
    state = tmp_path_factory.mktemp("bad-values")  # (pytest keeps the last few runs' and removes older ones)
    with contacts_pipeline(state, contacts=40, recipients=40, shared=40) as world:
        for name, kind in (("Score__c", "double"), ("Code__c", "string")):
            sandbox_admin(world.sandbox, "fields", {"object": "Contact", "name": name, "type": kind})
        with pg.connect(world.found.campaign_dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE recipients ADD COLUMN score numeric(5, 2), ADD COLUMN code varchar(8)")
        mapping = world.settings.mappings[0]
        world.settings = world.settings.model_copy(update={"mappings": [
            mapping.model_copy(update={"fields": [*mapping.fields, *EXTRA_FIELDS]})]})
        write_effective_config(world.settings, world.found, world.config_file)  # what the services read
        world.supervisor.start()
        wait_for(world.converged, 240, "the initial sync", world.supervisor, every=1)
        with pg.connect(world.found.campaign_dsn) as conn:
            pairs = [tuple(r) for r in conn.execute(
                "SELECT crm_id, campaign_key FROM crmsync.sync_state WHERE crm_id IS NOT NULL AND campaign_key IS NOT "
                "NULL ORDER BY campaign_key")]
        yield ValuePipeline(world, pairs)
