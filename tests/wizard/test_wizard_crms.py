"""The wizard and enumeration sync for every CRM with a connector other than the reference one (Salesforce has
its own, more detailed tests in test_wizard.py and test_enums.py): tables listed, the Campaign schema and
typed mirror tables keyed by the CRM's own primary key, `wizard load`, a field added in the CRM migrated on a
re-run, and `enums sync` for the CRM's picklists (Dynamics: local and global option sets, multi-select)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import psycopg
import pytest
import yaml

from tests.crms import CrmUnderTest, start_crm

SEEDED = 12


@pytest.fixture(scope="module", params=["dynamics", "oracle"])
def crm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrmUnderTest]:
    yield from start_crm(request.param, tmp_path_factory.mktemp(f"wizard-{request.param}"), seed_contacts=SEEDED)


@pytest.fixture
def configured(cli, crm: CrmUnderTest):
    """`crmsync account add crm …` done for the sandbox, secrets through the environment."""
    args, env = crm.account_add_args("crm")
    cli(*args, env=env)
    return cli


def scalar(dsn: str, query: str, *params):
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchone()[0]


def columns(dsn: str, table: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("""SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                                    WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped""",
                                 (table,)).fetchall())


def primary_key(dsn: str, table: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            """SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid
               AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary""", (table,))]


def test_wizard_generates_schema_and_mirrors_keyed_by_the_crm_id_and_loads_them(configured, crm, campaign_db) -> None:
    dsn, p = campaign_db[0], crm.profile
    accounts, contacts = p.tables
    namespace = crm.connector.discovery(crm.client).namespace
    out = configured("wizard", "crm", "--tables", f"{accounts},{contacts}", "--yes").text
    assert f"Discovering table structure '{contacts}'" in out and f"Schema '{namespace}:{namespace}Schemacrm' generated" in out
    mirror = f"{namespace}_crm.{contacts.lower()}"
    found = columns(dsn, mirror)
    key = p.key_of(contacts).lower()
    assert primary_key(dsn, mirror) == [key] and found[key] == "text"
    assert found[p.last_name.lower()] == "text"
    if p.multi_select:
        assert found[p.multi_select[0].lower()] == "text[]"

    document = yaml.safe_load(configured("wizard", "export", "crm").text)
    assert [e["name"] for e in document["elements"]] == [accounts, contacts]
    assert next(e for e in document["elements"] if e["name"] == contacts)["key"] == p.key_of(contacts)
    enumeration = next(e for e in document["enumerations"] if e["name"] == p.picklist[2])
    value, label = p.picklist_value
    assert {"name": value, "label": label, "value": value} in enumeration["values"]

    loaded = configured("wizard", "load", "crm").text
    total = sum(len(page) for page in crm.connector.query(crm.client).records(contacts, [p.last_name]))
    assert total >= SEEDED and f"{contacts}: {total} rows" in loaded
    assert scalar(dsn, f"SELECT count(*) FROM {mirror} WHERE {key} IS NOT NULL AND {p.last_name.lower()} "
                       f"IS NOT NULL") == total
    some = next(crm.connector.query(crm.client).records(contacts, [p.last_name]))[0]
    assert scalar(dsn, f"SELECT {p.last_name.lower()} FROM {mirror} WHERE {key} = %s", some["id"]) == some[p.last_name]
    if p.multi_select:  # a multi-select's values outside the enumeration are refused by the mirror's CHECK
        values = next(e for e in document["enumerations"] if e["name"] == p.multi_select[1])["values"]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"UPDATE {mirror} SET {p.multi_select[0]} = %s", ([values[0]["value"]],))
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(f"UPDATE {mirror} SET {p.multi_select[0]} = %s", (["not-a-choice"],))

    again = configured("wizard", "load", "crm").text  # a second load updates by the key: no duplicates
    assert f"{contacts}: {total} rows" in again and scalar(dsn, f"SELECT count(*) FROM {mirror}") == total
    formulas = configured("wizard", "refresh-formulas", "crm").text
    assert "formula refresh:" in formulas


def test_enums_sync_adds_and_maps_the_crm_picklists(configured, crm, campaign_db) -> None:
    dsn, p = campaign_db[0], crm.profile
    configured("wizard", "crm", "--tables", ",".join(p.tables), "--yes")
    table, _, enumeration = p.picklist
    value, label = p.picklist_value
    with psycopg.connect(dsn) as conn:  # an existing Campaign enumeration that knows the value by its label
        enum_id = conn.execute("INSERT INTO enumerations (name, label) VALUES ('picked', 'Picked') "
                               "RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO enumeration_values (enumeration_id, name, label, value) VALUES "
                     "(%s, 'ours', %s, 'OURS'), (%s, 'legacy', 'Legacy', 'LEG')", (enum_id, label, enum_id))
    preview = configured("enums", "sync", "crm", "--map", f"{enumeration}=picked", "--preview").text
    assert "preview" in preview and enumeration in preview
    report = configured("enums", "sync", "crm", "--map", f"{enumeration}=picked").text
    assert "removed, 1 kept" in report
    from crmsync.enums import StoredEnumerations

    hook = StoredEnumerations(dsn, "crm")
    assert hook.to_campaign("picked", value) == "OURS" and hook.to_crm("picked", "OURS") == value
    report = configured("enums", "sync", "crm", "--only", enumeration, "--replace", enumeration).text
    assert "1 removed" in report
    with psycopg.connect(dsn) as conn:
        left = {r[0] for r in conn.execute("SELECT v.value FROM enumeration_values v JOIN enumerations e ON "
                                           "e.id = v.enumeration_id WHERE e.name = 'picked'")}
    assert "LEG" not in left and "OURS" in left

    configured("enums", "sync", "crm")  # every other enumeration, as a new Campaign enumeration of its own
    if p.multi_select:
        multi = p.multi_select[1]
        with psycopg.connect(dsn) as conn:
            synced = [r[0] for r in conn.execute("SELECT v.value FROM enumeration_values v JOIN enumerations e ON "
                                                 "e.id = v.enumeration_id WHERE e.name = %s", (multi,))]
        assert len(synced) >= 2
        assert StoredEnumerations(dsn).to_crm(multi, synced[:2]) == synced[:2]
