"""Names that reach SQL from configuration, the database or a CRM describe are quoted as identifiers (never
spliced into statements), and a CRM describe that names something no CRM API name can be is refused."""
from __future__ import annotations

import threading
import time

import pytest
from psycopg import sql

from crmsync import config, drift, pg, topics
from crmsync.wizard.discovery import UnsafeName, check_api_name
from services.capture.service import CaptureService
from tests.conftest import consume_changes

ODD = 'Odd "Quoted" Table'  # a legal PostgreSQL table name that breaks naive "{schema}"."{name}" splicing


def _odd_table(dsn: str) -> None:
    with pg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, {} text, updated_at timestamptz)").format(
            sql.Identifier(ODD), sql.Identifier("Mixed Case")))
        conn.execute(sql.SQL("INSERT INTO {} ({}) VALUES ('before capture')").format(
            sql.Identifier(ODD), sql.Identifier("Mixed Case")))


def test_capture_publishes_a_table_whose_name_needs_quoting(endpoints, campaign_db) -> None:
    dsn, name = campaign_db
    _odd_table(dsn)
    settings = config.Settings.model_validate({"campaign": {
        "name": name, "slot_name": f"slot_{name}", "publication": f'pub "{name}"', "capture_tables": [ODD]}})
    service = CaptureService(settings, endpoints.bootstrap_servers, dsn)
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    try:
        time.sleep(1.0)
        with pg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("INSERT INTO {} ({}) VALUES ('streamed')").format(
                sql.Identifier(ODD), sql.Identifier("Mixed Case")))
        topic = topics.changes("campaign", name, topics.campaign_object("public", ODD))
        seen = consume_changes(endpoints.bootstrap_servers, [topic], lambda s: len(s) >= 2, timeout=60)
    finally:
        service.stop()
        runner.join(30)
    assert runner.is_alive() is False
    assert sorted(c.after["Mixed Case"] for c in seen) == ["before capture", "streamed"]


def test_drift_reads_a_campaign_table_whose_name_needs_quoting(campaign_db) -> None:
    dsn, _ = campaign_db
    _odd_table(dsn)
    with pg.connect(dsn) as conn:
        rows = drift.campaign_rows(conn, ODD)
    assert [row["Mixed Case"] for row in rows.values()] == ["before capture"]


@pytest.mark.parametrize("name", ["Contact", "Shoe_Size__c", "npe01__Home_Address__c", "Account__r"])
def test_crm_api_names_pass(name: str) -> None:
    assert check_api_name(name, "field", "Contact") == name


@pytest.mark.parametrize("name", ['Bad"Name__c', "x; DROP TABLE recipients", "Größe__c", "", "1abc", "a" * 300])
def test_names_no_crm_api_name_can_be_are_refused(name: str) -> None:
    with pytest.raises(UnsafeName, match="field .* of 'Contact', which is not a CRM API name"):
        check_api_name(name, "field", "Contact")
