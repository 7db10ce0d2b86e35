"""What the dashboard makes of the services' metrics, on synthetic scrapes (no broker, no services)."""
from __future__ import annotations

from crmsync.config import Settings
from crmsync.dashboard.sampler import Sampler, _api_budget
from crmsync.defaults import default_mappings


def settings() -> Settings:
    account = {"type": "salesforce", "login_url": "https://crm.example", "username": "u", "password": "p"}
    return Settings.model_validate({"accounts": {"salesforce": account},
                                    "mappings": [m.model_dump(mode="json") for m in default_mappings("salesforce")]})


def series(*samples: tuple[str, dict[str, str], float]) -> dict:
    return {(name, tuple(sorted(labels.items()))): value for name, labels, value in samples}


def test_freshness_is_reported_per_mapping_and_direction():
    sampler = Sampler(settings(), "unused:9092")
    scraped = series(
        ("crmsync_apply_freshness_last_seconds", {"writer": "writer-campaign", "table": "recipients", "target": "a"}, 0.8),
        ("crmsync_apply_freshness_seconds_sum", {"writer": "writer-campaign", "table": "recipients", "target": "a"}, 6.0),
        ("crmsync_apply_freshness_seconds_count", {"writer": "writer-campaign", "table": "recipients", "target": "a"}, 4),
        ("crmsync_apply_freshness_last_seconds", {"writer": "writer-crm", "table": "Contact", "target": "b"}, 1.5),
    )
    rows = {(r["mapping"], r["direction"]): r for r in sampler._freshness(scraped)}
    assert rows[("contacts", "crm→campaign")]["last_seconds"] == 0.8
    assert rows[("contacts", "crm→campaign")]["mean_seconds"] == 1.5 and rows[("contacts", "crm→campaign")]["count"] == 4
    assert rows[("contacts", "campaign→crm")]["last_seconds"] == 1.5
    assert rows[("contacts", "campaign→crm")]["mean_seconds"] is None  # no histogram yet: no mean invented


def test_api_budget_takes_the_newest_report_and_sums_the_calls_of_every_service():
    scraped = series(
        ("crmsync_crm_api_limit", {"account": "salesforce", "target": "poller"}, 15000),
        ("crmsync_crm_api_usage", {"account": "salesforce", "target": "poller"}, 120),
        ("crmsync_crm_api_usage", {"account": "salesforce", "target": "writer"}, 131),
        ("crmsync_crm_api_calls_total", {"account": "salesforce", "kind": "query", "target": "poller"}, 40),
        ("crmsync_crm_api_calls_total", {"account": "salesforce", "kind": "collections", "target": "writer"}, 2),
        ("crmsync_crm_api_window_info", {"account": "salesforce", "window": "day", "target": "poller"}, 1),
        ("crmsync_crm_api_limit", {"account": "oracle", "target": "poller"}, 30),
        ("crmsync_crm_api_usage", {"account": "oracle", "target": "poller"}, 4),
        ("crmsync_crm_api_window_info", {"account": "oracle", "window": "minute", "target": "poller"}, 1),
    )
    assert _api_budget(scraped) == [
        {"account": "oracle", "window": "minute", "used": 4, "limit": 30, "remaining": 26, "calls": 0.0,
         "budget": None, "projected": None},
        {"account": "salesforce", "window": "day", "used": 131, "limit": 15000, "remaining": 14869, "calls": 42,
         "budget": None, "projected": None}]


def test_api_budget_shows_the_pollers_budget_and_projection():
    scraped = series(
        ("crmsync_crm_api_limit", {"account": "salesforce", "target": "poller"}, 100000),
        ("crmsync_api_budget_per_day", {"account": "salesforce", "target": "poller"}, 50000),
        ("crmsync_api_calls_projected_per_day", {"account": "salesforce", "target": "poller"}, 43210.5),
        ("crmsync_api_budget_per_day", {"account": "oracle", "target": "poller-oracle"}, 0),  # no budget known
        ("crmsync_api_calls_projected_per_day", {"account": "oracle", "target": "poller-oracle"}, 86400),
    )
    rows = {r["account"]: r for r in _api_budget(scraped)}
    assert (rows["salesforce"]["budget"], rows["salesforce"]["projected"]) == (50000, 43210.5)
    assert (rows["oracle"]["budget"], rows["oracle"]["projected"], rows["oracle"]["limit"]) == (None, 86400, None)
