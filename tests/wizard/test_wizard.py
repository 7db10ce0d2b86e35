"""The wizard end to end against the HTTPS sandbox and a real PostgreSQL: schema, mirror tables, drift, load,
multi-select CHECK, formula refresh."""
from __future__ import annotations

import psycopg
import pytest
import yaml

from crmsync.mirrors import data
from connectors.salesforce.client import SalesforceClient
from connectors.salesforce.discovery import SalesforceDiscovery


def columns(dsn: str, table: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("""SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                                    WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped""",
                                 (table,)).fetchall())


def scalar(dsn: str, query: str, *params):
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchone()[0]


def test_full_scripted_run_creates_schema_tables_columns_and_enumerations(added, campaign_db) -> None:
    dsn = campaign_db[0]
    out = added("wizard", "sf", "--tables", "Account,Contact", "--yes").text
    for line in ("Discovering table structure 'Account'", "Discovering table structure 'Contact'",
                 "unable to use type 'address' of field 'BillingAddress'",
                 "unable to use type 'address' of field 'MailingAddress'",
                 "Generating schema 'sfdc:sfdcSchemasf'…", "Schema 'sfdc:sfdcSchemasf' generated"):
        assert line in out
    account, contact = columns(dsn, "sfdc_sf.account"), columns(dsn, "sfdc_sf.contact")
    assert account["id"] == "text" and account["numberofemployees"] == "integer"
    assert account["annualrevenue"] == "numeric" and account["industry"] == "text"
    assert contact["interests__c"] == "text[]" and contact["birthdate"] == "date"
    assert contact["createddate"] == "timestamp with time zone" and contact["email_domain__c"] == "text"
    assert "billingaddress" not in account and "billingcity" in account and "mailingaddress" not in contact
    assert scalar(dsn, """SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid
                          AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'sfdc_sf.contact'::regclass
                          AND i.indisprimary""") == "id"

    document = yaml.safe_load(added("wizard", "export", "sf").text)
    assert document["name"] == "sfdc:sfdcSchemasf" and document["namespace"] == "sfdc"
    assert [e["name"] for e in document["elements"]] == ["Account", "Contact"]
    industry = next(e for e in document["enumerations"] if e["name"] == "Account_Industry")
    assert industry["label"] == "List of 'Industry' from 'Account'" and {"name": "Banking", "label": "Banking",
                                                                          "value": "Banking"} in industry["values"]
    assert next(e for e in document["enumerations"] if e["name"] == "Contact_Interests__c")["multiple"] is True
    assert scalar(dsn, "SELECT count(*) FROM crmsync.crm_enumeration_values WHERE enumeration = "
                       "'Account_Industry'") == len(industry["values"])

    loaded = added("wizard", "load", "sf").text
    assert "Contact: 40 rows" in loaded
    assert scalar(dsn, "SELECT count(*) FROM sfdc_sf.contact") == 40
    assert scalar(dsn, "SELECT count(*) FROM sfdc_sf.contact WHERE createddate IS NOT NULL AND lastname "
                       "IS NOT NULL") == 40


def test_field_added_and_retyped_in_the_crm_is_migrated_keeping_data(added, campaign_db, sf, account) -> None:
    dsn = campaign_db[0]
    sf.admin("fields", {"object": "Contact", "name": "Shoe_Size__c", "type": "string", "label": "Shoe Size"})
    added("wizard", "sf", "--tables", "Contact", "--yes")
    assert columns(dsn, "sfdc_sf.contact")["shoe_size__c"] == "text"
    client = SalesforceClient("sf", account)
    some_id = next(client.query_all_pages("SELECT Id FROM Contact LIMIT 1"))[0]["Id"]
    client.collections_update("Contact", [{"id": some_id, "Shoe_Size__c": "42"}])
    added("wizard", "load", "sf")
    with psycopg.connect(dsn, autocommit=True) as conn:  # a column the CRM no longer has, with data
        conn.execute("ALTER TABLE sfdc_sf.contact ADD COLUMN legacy__c text")
        conn.execute("UPDATE sfdc_sf.contact SET legacy__c = 'keep me'")

    sf.admin("fields", {"object": "Contact", "name": "Shoe_Size__c", "type": "double", "label": "Shoe Size"})
    sf.admin("fields", {"object": "Contact", "name": "Nickname__c", "type": "string"})
    out = added("wizard", "sf", "--yes").text  # re-run: same tables as last time
    assert "field 'Nickname__c' added to 'Contact'" in out
    assert "field 'Shoe_Size__c' of 'Contact' retyped text -> double precision" in out
    assert "field 'legacy__c' removed from 'Contact': column kept as 'legacy__c__removed'" in out
    after = columns(dsn, "sfdc_sf.contact")
    assert after["shoe_size__c"] == "double precision" and after["nickname__c"] == "text"
    assert scalar(dsn, "SELECT shoe_size__c FROM sfdc_sf.contact WHERE id = %s", some_id) == 42.0
    assert scalar(dsn, "SELECT count(*) FROM sfdc_sf.contact WHERE legacy__c__removed = 'keep me'") == 40
    assert scalar(dsn, "SELECT count(*) FROM sfdc_sf.contact") == 40
    client.collections_update("Contact", [{"id": some_id, "Nickname__c": "Shorty"}])
    added("wizard", "load", "sf")
    assert scalar(dsn, "SELECT nickname__c FROM sfdc_sf.contact WHERE id = %s", some_id) == "Shorty"


def test_multi_select_values_outside_the_enumeration_are_refused(added, campaign_db) -> None:
    dsn = campaign_db[0]
    added("wizard", "sf", "--tables", "Contact", "--yes")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO sfdc_sf.contact (id, interests__c) VALUES ('003A', ARRAY['Golf', 'Tennis'])")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO sfdc_sf.contact (id, interests__c) VALUES ('003B', ARRAY['Golf', 'Knitting'])")
        # the CHECK reads the enumeration table: a new CRM value is accepted without any DDL
        conn.execute("INSERT INTO crmsync.crm_enumeration_values VALUES ('sf', 'Contact_Interests__c', 'Knitting', "
                     "'Knitting', 99)")
        conn.execute("INSERT INTO sfdc_sf.contact (id, interests__c) VALUES ('003B', ARRAY['Golf', 'Knitting'])")


def test_formula_refresh_updates_only_changed_formula_values(added, campaign_db, account) -> None:
    dsn = campaign_db[0]
    added("wizard", "sf", "--tables", "Contact", "--yes")
    added("wizard", "load", "sf")
    contact_id, email = scalar(dsn, "SELECT array[id, email] FROM sfdc_sf.contact WHERE email LIKE '%%@%%' "
                                    "ORDER BY id LIMIT 1")
    client = SalesforceClient("sf", account)
    client.collections_update("Contact", [{"id": contact_id, "Email": "someone@refreshed.example"}])
    assert data.refresh_formulas(SalesforceDiscovery(client), dsn, "sf", ["Contact"]) == {"Contact": 1}
    assert scalar(dsn, "SELECT email_domain__c FROM sfdc_sf.contact WHERE id = %s", contact_id) == "refreshed.example"
    assert scalar(dsn, "SELECT email FROM sfdc_sf.contact WHERE id = %s", contact_id) == email  # formulas only
    assert "Contact: 0 changed" in added("wizard", "refresh-formulas", "sf").text
