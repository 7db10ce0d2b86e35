"""The wizard refuses a describe that names a field no Salesforce API name can be (letters, digits and
underscores, from a letter): such a name would otherwise reach SOQL queries and mirror-table DDL. Its own
module, so the sandbox with the odd field is its own."""
from __future__ import annotations

import psycopg


def test_a_field_name_no_api_name_can_be_stops_the_wizard(added, sf, campaign_db) -> None:
    sf.admin("fields", {"object": "Contact", "name": "Größe__c", "type": "string"})  # the sandbox lets it in
    result = added("wizard", "sf", "--tables", "Contact", "--yes", ok=False)
    assert result.exit_code == 2
    assert "field 'Größe__c' of 'Contact'" in result.text and "not a CRM API name" in result.text
    with psycopg.connect(campaign_db[0]) as conn:
        assert conn.execute("SELECT count(*) FROM crmsync.crm_schemas").fetchone()[0] == 0  # nothing generated
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'sfdc_%'").fetchone()[0] == 0
