"""The poller's daily API budget (services/crm_poller/budget.py): the pacing rule on its own, then a real poller
against the sandbox, broker and PostgreSQL with a budget far below what it would spend unpaced."""
from __future__ import annotations

import threading
import time

import pytest

from connectors.salesforce.client import SalesforceClient
from services.crm_poller import service as poller
from services.crm_poller.budget import SECONDS_PER_DAY, Pacer
from tests.sandbox_salesforce.conftest import RunningSandbox
from tests.waiting import wait_for

from .conftest import FAST_RETRIES, account_for, make_client, settings_for, unique_name


# -- the rule ------------------------------------------------------------------------------------------------
def test_without_a_budget_every_object_is_read_at_the_fastest_interval() -> None:
    pacer = Pacer(2.0)
    for obj in ("Contact", "Account", "Opportunity"):
        pacer.add(obj)
        pacer.record_poll(obj, 1, False)
    assert {pacer.interval(o) for o in pacer.paces} == {2.0}
    assert pacer.projected_per_day() == pytest.approx(3 * SECONDS_PER_DAY / 2)


def test_a_budget_is_shared_and_busy_objects_get_more_of_it() -> None:
    pacer = Pacer(2.0, budget_per_day=43_200)  # half a call per second for three objects
    for obj in ("Contact", "Account", "Opportunity"):
        pacer.add(obj)
    for _ in range(20):
        pacer.record_poll("Contact", 1, True)  # busy
        pacer.record_poll("Account", 1, False)
        pacer.record_poll("Opportunity", 1, False)
    assert pacer.projected_per_day() == pytest.approx(43_200, rel=0.01)  # all of it, none more
    assert pacer.interval("Contact") < pacer.interval("Account") == pacer.interval("Opportunity")
    assert pacer.interval("Account") / pacer.interval("Contact") > 4  # up to five times the share
    for _ in range(20):  # Contact falls idle, Account gets busy: the shares follow
        pacer.record_poll("Contact", 1, False)
        pacer.record_poll("Account", 1, True)
    assert pacer.interval("Account") < pacer.interval("Contact")
    assert pacer.projected_per_day() <= 43_200 * 1.01


def test_a_share_an_object_cannot_use_goes_to_the_others() -> None:
    pacer = Pacer(2.0, budget_per_day=60_000)
    pacer.add("Contact")
    pacer.add("Account")
    for _ in range(10):
        pacer.record_poll("Contact", 1, True)
        pacer.record_poll("Account", 1, True)
    # 0.69 calls/s: each could use 0.35, but no object is read faster than every 2 s (0.5 calls/s at most)
    assert pacer.interval("Contact") == pytest.approx(2 * SECONDS_PER_DAY / 60_000, rel=0.01)
    pacer.set_budget(200_000)  # more than both can use at 2 s
    assert pacer.interval("Contact") == pacer.interval("Account") == 2.0
    assert pacer.projected_per_day() == pytest.approx(SECONDS_PER_DAY, rel=0.01)


def test_push_sources_calls_come_off_the_budget_first_and_a_hopeless_budget_says_so() -> None:
    pacer = Pacer(2.0, budget_per_day=8_640, max_interval=600)
    pacer.add("Lead")
    pacer.record_poll("Lead", 1, False)
    alone = pacer.interval("Lead")
    pacer.record_other(30)  # a push source filled a gap: 30 calls
    assert pacer.interval("Lead") > alone
    tiny = Pacer(2.0, budget_per_day=10, max_interval=600)
    tiny.add("Lead")
    tiny.record_poll("Lead", 1, False)
    assert tiny.interval("Lead") == 600 and tiny.projected_per_day() == pytest.approx(144)  # over, and shown


# -- a real poller -----------------------------------------------------------------------------------------
def test_a_tiny_budget_slows_the_poller_and_its_calls_stay_under_it(module_sandbox: RunningSandbox,
                                                                     campaign_endpoints, tmp_path) -> None:
    """Two polled objects at a 0.2 s interval would spend 10 calls a second; with the budget at half of a daily
    limit of 17,280 calls (0.1 a second) they spend that and no more, and the object that changes is read
    more often than the idle one."""
    limit = module_sandbox.admin("limits", {})["daily_api_max"]
    module_sandbox.admin("limits", {"daily_api_max": 17_280})
    name = unique_name("b")
    account = account_for(module_sandbox)  # no api_budget_per_day: half of the org's limit (/limits)
    client = SalesforceClient(name, account, policy=FAST_RETRIES)
    p = poller.build(settings_for(name, account, tmp_path), campaign_endpoints, name, ["Lead", "Account"],
                     client=client, interval=0.2, mode="poll")
    stop = threading.Event()
    thread = threading.Thread(target=p.serve, args=(stop,), daemon=True)
    writer = make_client(module_sandbox)
    try:
        thread.start()
        wait_for(lambda: all(o.snapshot_done for o in p.objects.values()), 60, "the first reads")
        assert p.pacer.budget_per_day == 8_640
        started, calls = time.monotonic(), sum(client.calls.values())
        while time.monotonic() - started < 25:  # Leads keep coming; Accounts do not
            writer.collections_create("Lead", [{"LastName": "Budget", "Company": "Paced"}])
            time.sleep(1.0)
        spent, elapsed = sum(client.calls.values()) - calls, time.monotonic() - started
    finally:
        stop.set()
        thread.join(30)
        p.close()
        module_sandbox.admin("limits", {"daily_api_max": limit})
    assert spent <= 8_640 / SECONDS_PER_DAY * elapsed + len(p.objects), spent  # + one read per object under way
    assert p.pacer.projected_per_day() <= 8_640
    assert min(p.pacer.interval("Lead"), p.pacer.interval("Account")) >= 5  # from 0.2 s
    assert p.pacer.interval("Lead") < p.pacer.interval("Account")  # the busy object is read more often
