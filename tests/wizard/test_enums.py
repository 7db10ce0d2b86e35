"""Enumeration sync: preview changes nothing, Replace=no adds, Replace=yes replaces; the stored maps translate."""
from __future__ import annotations

import psycopg

from crmsync.enums import StoredEnumerations


def values(dsn: str, enumeration: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("""SELECT v.value, v.label FROM enumeration_values v JOIN enumerations e
                                    ON e.id = v.enumeration_id WHERE e.name = %s""", (enumeration,)).fetchall())


def test_add_then_replace_with_preview(added, campaign_db) -> None:
    dsn = campaign_db[0]
    added("wizard", "sf", "--tables", "Account", "--yes")
    with psycopg.connect(dsn) as conn:  # an existing Campaign enumeration with its own codes
        enum_id = conn.execute("INSERT INTO enumerations (name, label) VALUES ('industry', 'Industry') "
                               "RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO enumeration_values (enumeration_id, name, label, value) VALUES "
                     "(%s, 'banking', 'Banking', 'BNK'), (%s, 'legacy', 'Legacy', 'LEG')", (enum_id, enum_id))

    preview = added("enums", "sync", "sf", "--map", "Account_Industry=industry", "--preview").text
    assert "preview" in preview and "List of 'Industry' from 'Account'" in preview and "31: Agriculture" in preview
    assert values(dsn, "industry") == {"BNK": "Banking", "LEG": "Legacy"}  # nothing applied

    report = added("enums", "sync", "sf", "--map", "Account_Industry=industry").text
    assert "31 value(s) added, 0 removed, 1 kept" in report
    after_add = values(dsn, "industry")
    assert len(after_add) == 33 and "LEG" in after_add and "Energy" in after_add and "Banking" not in after_add
    hook = StoredEnumerations(dsn, "sf")
    assert hook.to_campaign("industry", "Banking") == "BNK" and hook.to_crm("industry", "BNK") == "Banking"
    assert hook.to_campaign("industry", "Energy") == "Energy" and hook.to_campaign("other", "x") == "x"

    preview = added("enums", "sync", "sf", "--replace", "Account_Industry", "--preview").text
    assert "1: LEG" in preview and "Yes" in preview
    assert "LEG" in values(dsn, "industry")
    report = added("enums", "sync", "sf", "--only", "Account_Industry", "--replace", "Account_Industry").text
    assert "0 value(s) added, 1 removed, 32 kept" in report
    after_replace = values(dsn, "industry")
    assert len(after_replace) == 32 and "LEG" not in after_replace and "BNK" in after_replace


def test_new_enumeration_by_default_and_multi_select(added, campaign_db) -> None:
    dsn = campaign_db[0]
    added("wizard", "sf", "--tables", "Contact", "--yes")
    added("enums", "sync", "sf", "--only", "Contact_Interests__c")
    assert set(values(dsn, "Contact_Interests__c")) >= {"Golf", "Wine"}
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT label FROM enumerations WHERE name = 'Contact_Interests__c'").fetchone()[0] == \
            "List of 'Interests' from 'Contact'"
    hook = StoredEnumerations(dsn)
    assert hook.to_crm("Contact_Interests__c", ["Golf", "Wine"]) == ["Golf", "Wine"]
    result = added("enums", "sync", "sf", "--map", "Nope=x", ok=False)
    assert result.exit_code == 2 and "unknown CRM enumeration" in result.text


def test_stream_processors_translate_through_the_enumeration_maps(added, campaign_db) -> None:
    """After `enums sync`, the accounts mapping's Industry values cross in each side's own codes, and a map
    changed while the stream processors run is picked up without a restart (max_age)."""
    from crmsync import config, pg
    from crmsync.defaults import default_mappings
    from crmsync.envelope import Change, crm_change
    from streams.reconcile import Reconciler

    dsn = campaign_db[0]
    added("wizard", "sf", "--tables", "Account", "--yes")
    with psycopg.connect(dsn) as conn:
        enum_id = conn.execute("INSERT INTO enumerations (name, label) VALUES ('industry', 'Industry') "
                               "RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO enumeration_values (enumeration_id, name, label, value) VALUES "
                     "(%s, 'banking', 'Banking', 'BNK')", (enum_id,))
    settings = config.Settings.model_validate({
        "accounts": {"sf": {"type": "salesforce", "username": "u", "password": "p"}}, "campaign": {"name": "campaign"},
        "mappings": [m.model_dump() for m in default_mappings("sf") if m.name == "accounts"]})
    hook = StoredEnumerations(dsn, max_age=0)
    reconciler = Reconciler(settings, "campaign", enums=hook)

    def crm_account(crm_id: str, industry: str) -> Change:
        stamp = "2026-11-29T06:00:00.000Z"
        return crm_change("sf", "Account", "c", crm_id, stamp, stamp,
                          after={"Id": crm_id, "Name": f"Org {crm_id}", "Industry": industry, "SystemModstamp": stamp})

    with pg.connect(dsn) as conn:
        before = reconciler.process(conn, [crm_account("001A", "Banking")]).commands
    assert before[0].values["industry"] == "Banking"  # not mapped yet: passes through unchanged

    added("enums", "sync", "sf", "--map", "Account_Industry=industry")
    with pg.connect(dsn) as conn:
        commands = reconciler.process(conn, [crm_account("001B", "Banking")]).commands
    assert [c.values["industry"] for c in commands] == ["BNK"]

    org = psycopg.connect(dsn, autocommit=True).execute(
        "INSERT INTO organisations (name, industry) VALUES ('Org C', 'BNK') RETURNING id").fetchone()[0]
    change = Change(id="campaign:1", side="campaign", source="campaign", object="organisations", op="c",
                    key={"id": org}, after={"id": org, "name": "Org C", "industry": "BNK"},
                    position={"lsn": "0/1", "lsn_int": 1, "seq": 0}, source_ts="2026-11-29T06:00:01Z")
    with pg.connect(dsn) as conn:
        to_crm = reconciler.process(conn, [change]).commands
    assert [c.values["Industry"] for c in to_crm] == ["Banking"]
