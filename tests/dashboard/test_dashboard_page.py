"""The dashboard in headless Chromium against a running pipeline: the numbers the page shows are compared with
what the broker, the services' /metrics and the CRM say directly."""
from __future__ import annotations

import json
import signal
import time
from datetime import datetime, timedelta, timezone

import httpx
from selenium.webdriver.common.by import By

from crmsync import lag, pg, rejects
from crmsync.dashboard.scrape import samples, scrape

from .conftest import Pipeline, wait_for

READ_PAGE = """
const all = (selector, attribute) => Object.fromEntries([...document.querySelectorAll(selector)]
  .map((e) => [e.getAttribute(attribute) + (e.dataset.field ? "|" + e.dataset.field : ""), e.textContent]));
return {at: document.querySelector("#updated").dataset.at,
        groups: all("[data-group]", "data-group"), freshness: all("[data-freshness]", "data-freshness"),
        freshness_count: all("[data-freshness-count]", "data-freshness-count"),
        api_used: all("[data-api-used]", "data-api-used"), api_remaining: all("[data-api-remaining]", "data-api-remaining")};
"""


def read_page(browser) -> dict:
    """Everything the test compares, read in one script so it all comes from the same render."""
    page = browser.execute_script(READ_PAGE)
    page["at"] = float(page["at"]) if page["at"] else 0.0
    return page


def page_after(browser, moment: float, timeout: float = 60) -> dict:
    """The page once it shows a sample taken after `moment`."""
    return wait_for(lambda: (p := read_page(browser))["at"] > moment and p, timeout, "a newer sample on the page")


def group_of(pipeline: Pipeline, service: str) -> lag.GroupSpec:
    return next(g for g in lag.consumer_groups(pipeline.settings) if g.service == service)


def metrics(pipeline: Pipeline, label_prefix: str) -> dict:
    """One service's /metrics, read directly."""
    url = next(u for label, u in pipeline.supervisor.metrics_targets().items() if label.startswith(label_prefix))
    return scrape(url)


def test_page_shows_lag_status_and_eta_that_the_broker_confirms(pipeline: Pipeline, browser):
    """The CRM writer is frozen while Campaign edits flow: its commands pile up. The page's lag equals the
    broker's, its lag in seconds is the age of the oldest waiting command, Burrow's rules call it STALL or STOP
    without any threshold, and there is no ETA; once the writer resumes the group is OK at lag 0."""
    browser.get(pipeline.dashboard.login_url)  # the printed link: token → session cookie
    spec = group_of(pipeline, "writer-salesforce")
    writer = pipeline.child("writer-salesforce")
    writer.send_signal(signal.SIGSTOP)
    try:
        with pg.connect(pipeline.found.campaign_dsn, autocommit=True) as conn:
            keys = [r[0] for r in conn.execute("SELECT id FROM recipients WHERE crm_id IS NOT NULL ORDER BY id LIMIT 8")]
            conn.execute("UPDATE recipients SET job_title = 'dashboard lag' WHERE id = ANY(%s)", (keys,))
        direct = lambda: lag.group_lag(pipeline.found.bootstrap_servers, spec.group, list(spec.topics))  # noqa: E731
        wait_for(lambda: lag.total(direct())[1] >= len(keys), 90, "the commands to wait for the frozen writer")
        time.sleep(3)  # the streams have decided everything: the lag stays put from here
        lags = direct()
        expected_lag = lag.total(lags)[1]
        oldest = min(lag.first_unconsumed_timestamps(pipeline.found.bootstrap_servers, lags).values())
        page = wait_for(lambda: (p := read_page(browser))["groups"].get(f"{spec.group}|status") in ("STALL", "STOP")
                        and p, 120, "the page to judge the frozen writer")
        assert int(page["groups"][f"{spec.group}|lag"]) == expected_lag
        assert abs(float(page["groups"][f"{spec.group}|lag_seconds"]) - (page["at"] - oldest)) <= 0.051
        assert page["groups"][f"{spec.group}|eta"] == "∞"  # nothing is consumed: no ETA rather than a guess
        exported = scrape(f"{pipeline.dashboard.url}/metrics")
        assert sum(v for labels, v in samples(exported, "crmsync_consumer_lag_messages")
                   if labels["group"] == spec.group) == expected_lag
        (status,) = [v for labels, v in samples(exported, "crmsync_consumer_group_status") if labels["group"] == spec.group]
        assert status in (3.0, 4.0)  # STALL or STOP, as on the page
    finally:
        writer.send_signal(signal.SIGCONT)
    wait_for(lambda: read_page(browser)["groups"].get(f"{spec.group}|lag") == "0", 240,
             "the writer to catch up", pipeline.supervisor)
    assert read_page(browser)["groups"][f"{spec.group}|status"] == "OK"
    points = browser.execute_script(  # the last hour's chart drew the episode: a line for the group
        f"return document.querySelector('#chart-lag polyline[data-series=\"{spec.group}\"]').getAttribute('points')")
    assert len(points.split()) >= 10
    wait_for(pipeline.converged, 120, "both sides to agree again", every=0.5, supervisor=pipeline.supervisor)


def test_page_freshness_and_api_budget_match_the_services_metrics(pipeline: Pipeline, browser):
    """One edit each way; the freshness per mapping and direction on the page is the writers' own measurement,
    and the API budget is what the CRM reported to the poller and the writer."""
    browser.get(pipeline.dashboard.login_url)  # the printed link: token → session cookie
    with pg.connect(pipeline.found.campaign_dsn, autocommit=True) as conn:
        (key, _), (_, other) = conn.execute(
            "SELECT id, crm_id FROM recipients WHERE crm_id IS NOT NULL ORDER BY id DESC LIMIT 2").fetchall()
        conn.execute("UPDATE recipients SET job_title = 'fresh export' WHERE id = %s", (key,))
    pipeline.client.collections_update("Contact", [{"id": other, "Title": "fresh import"}])
    with pg.connect(pipeline.found.campaign_dsn) as conn:
        imported = "SELECT count(*) FROM recipients WHERE crm_id = %s AND job_title = 'fresh import'"
        wait_for(lambda: conn.execute(imported, (other,)).fetchone()[0], 120, "the CRM edit in Campaign",
                 pipeline.supervisor)
    wait_for(pipeline.converged, 120, "the Campaign edit in the CRM", every=0.5, supervisor=pipeline.supervisor)
    time.sleep(2)  # nothing left in flight

    usage_before = _api_used(pipeline)
    writers = {**metrics(pipeline, "writer-campaign"), **metrics(pipeline, "writer-salesforce")}
    scraped_at = time.time()
    page = page_after(browser, scraped_at + 0.5)
    usage_after = _api_used(pipeline)

    last = by_writer(writers, "crmsync_apply_freshness_last_seconds")
    counts = by_writer(writers, "crmsync_apply_freshness_seconds_count")
    for (writer, table), direction in ((("writer-campaign", "recipients"), "crm→campaign"),
                                       (("writer-salesforce", "Contact"), "campaign→crm")):
        shown = float(page["freshness"][f"contacts {direction}"])
        assert abs(shown - last[(writer, table)]) <= 0.0006, (direction, shown, last[(writer, table)])
        assert int(page["freshness_count"][f"contacts {direction}"]) == int(counts[(writer, table)])
        assert 0 < last[(writer, table)] < 60  # an edit made seconds ago, not the seed's age

    used = float(page["api_used"]["salesforce"])
    assert usage_before <= used <= usage_after
    limit = max(v for labels, v in samples(metrics(pipeline, "poller-salesforce"), "crmsync_crm_api_limit"))
    assert float(page["api_remaining"]["salesforce"]) == limit - used


def by_writer(series: dict, name: str) -> dict[tuple[str, str], float]:
    return {(labels["writer"], labels["table"]): value for labels, value in samples(series, name)}


def _api_used(pipeline: Pipeline) -> float:
    """The newest API usage the CRM reported to any of our services."""
    return max(v for prefix in ("poller-salesforce", "writer-salesforce")
               for labels, v in samples(metrics(pipeline, prefix), "crmsync_crm_api_usage"))


def test_journey_lookup_through_the_page(pipeline: Pipeline, browser):
    """Look up the recipient edited above by its Campaign key: the page shows its CRM twin and the trip of the
    edit (modified → captured → published → decided → applied → acknowledged), the same as the JSON API, and
    'applied' is the CRM's own modification stamp of the contact."""
    with pg.connect(pipeline.found.campaign_dsn) as conn:
        key, crm_id = conn.execute("SELECT id, crm_id FROM recipients WHERE job_title = 'fresh export'").fetchone()
    browser.get(pipeline.dashboard.login_url)  # the printed link: token → session cookie
    browser.find_element(By.ID, "journey-id").send_keys(str(key))
    browser.find_element(By.ID, "journey-go").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "[data-trip]"), 60, "the journey on the page")
    shown = browser.execute_script("""
      return {header: document.querySelector('[data-journey="header"]').textContent,
              trips: [...document.querySelectorAll('[data-trip]')].map((t) => ({direction: t.dataset.direction,
                caption: t.caption.textContent,
                stages: [...t.querySelectorAll('[data-stage]')].map((c) => [c.dataset.stage, c.textContent])}))};""")
    assert crm_id in shown["header"] and str(key) in shown["header"]
    api = httpx.get(f"{pipeline.dashboard.url}/api/journey/{key}", timeout=60, headers=pipeline.auth).json()
    assert [t["direction"] for t in api["trips"]] == [t["direction"] for t in shown["trips"]]
    by_crm_id = httpx.get(f"{pipeline.dashboard.url}/api/journey/{crm_id}", timeout=60, headers=pipeline.auth).json()
    assert (by_crm_id["campaign_key"], len(by_crm_id["trips"])) == (key, len(api["trips"]))  # either id finds it
    assert httpx.get(f"{pipeline.dashboard.url}/api/journey/nobody", timeout=60, headers=pipeline.auth).status_code == 404
    edit = [t for t in shown["trips"] if t["direction"] == "campaign→crm" and "Title" in t["caption"]][-1]
    stages = {name: _moment(at) for name, at in edit["stages"]}  # in the order the page lists them
    assert list(stages) == ["modified", "captured", "published", "decided", "applied", "acknowledged"]
    assert all(stages.values()), edit
    assert stages["modified"] <= stages["captured"] <= stages["published"] <= stages["decided"] <= stages["acknowledged"]
    (contact,) = [r for page in pipeline.client.query_all_pages(
        f"SELECT SystemModstamp FROM Contact WHERE Id = '{crm_id}'") for r in page]
    assert abs((stages["applied"] - _moment(contact["SystemModstamp"])).total_seconds()) < 0.001
    assert stages["decided"] <= stages["applied"] + timedelta(seconds=1)  # the CRM stamps on its own clock


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def test_health_and_readiness_of_every_service_and_the_dashboard(pipeline: Pipeline):
    for label, url in pipeline.supervisor.metrics_targets().items():
        base = url.removesuffix("/metrics")
        assert httpx.get(f"{base}/healthz", timeout=5).json()["status"] == "ok"
        ready = wait_for(lambda: (r := httpx.get(f"{base}/readyz", timeout=15)).status_code == 200 and r.json(), 60,
                         f"{label} to be ready")
        assert {"broker", "database", "working"} <= set(ready["checks"]), ready  # working: loop runs, in its group
    answer = httpx.get(f"{pipeline.dashboard.url}/readyz", timeout=15)
    assert answer.status_code == 200 and answer.json()["checks"] == {"broker": "ok", "database": "ok"}


def test_logs_are_json_carry_record_ids_and_no_secrets(pipeline: Pipeline):
    """A record the CRM refuses (the sandbox's validation rule) is logged with its id; no configured password,
    token or client secret appears in any service's log."""
    with pg.connect(pipeline.found.campaign_dsn, autocommit=True) as conn:
        refused = conn.execute("INSERT INTO recipients (email, first_name, last_name) VALUES "
                               "('refused@invalid.example', 'Val', 'Idation') RETURNING id").fetchone()[0]
        wait_for(lambda: conn.execute("SELECT count(*) FROM crmsync.rejects WHERE error_code = "
                                      "'FIELD_CUSTOM_VALIDATION_EXCEPTION'").fetchone()[0], 120,
                 "the CRM to refuse the record", pipeline.supervisor)
    lines = [json.loads(line) for path in sorted(pipeline.log_dir.glob("*.log"))
             for line in path.read_text().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "msg", "service"} <= set(line) for line in lines)
    refusals = [line for line in lines if line.get("record_id") and str(refused) in line["record_id"]]
    assert refusals and refusals[0]["service"] == "writer-salesforce", refusals
    account = pipeline.settings.accounts["salesforce"]
    secrets = [account.password.get_secret_value(), account.security_token.get_secret_value(),
               account.client_secret.get_secret_value()]
    everything = "".join(path.read_text() for path in pipeline.log_dir.glob("*.log"))
    assert all(secret and secret not in everything for secret in secrets)


def test_page_lists_rejects_with_their_reasons(pipeline: Pipeline, browser):
    """The record refused above is on the page with Salesforce's error code and reason, counted as the ledger
    counts it."""
    with pg.connect(pipeline.found.campaign_dsn) as conn:
        open_rejects = conn.execute("SELECT count(*) FROM crmsync.rejects WHERE status <> 'resolved'").fetchone()[0]
        reason, record = conn.execute("SELECT reason, record FROM crmsync.rejects WHERE error_code = "
                                      "'FIELD_CUSTOM_VALIDATION_EXCEPTION' LIMIT 1").fetchone()
    browser.get(pipeline.dashboard.login_url)  # the printed link: token → session cookie
    code = "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    row = wait_for(lambda: browser.execute_script(f"""
        const cell = document.querySelector('[data-reject-code="{code}"]');
        return cell && [...cell.parentElement.children].map((c) => c.textContent);"""), 60, "the reject on the page")
    assert row[0] == "writer-salesforce" and row[1] == "Contact"
    assert row[5] == rejects.without_values(reason, record)  # the record's own values are not shown
    assert int(browser.find_element(By.ID, "rejects-open").text) == open_rejects
