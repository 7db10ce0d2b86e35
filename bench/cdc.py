"""Benchmark: Salesforce changes pushed (Change Data Capture through the Pub/Sub API) versus polled, and the poller's
daily API budget. Every service runs as its own process under the `crmsync run` supervisor, with the local HTTPS
Salesforce sandbox (its Pub/Sub API over gRPC/TLS), the embedded broker and PostgreSQL, the contacts mapping.

1. CRM → Campaign freshness, once with the account's default (`cdc`: the poller subscribes to ContactChangeEvent)
   and once with `cdc: false` (SystemModstamp polling every 2 s): sObject Collections PATCHes at --rate records
   a second for --seconds, each to its own record; freshness = recipients.updated_at (written by
   writer-campaign) minus the Contact's SystemModstamp (bench/sync.py's measure and stage split).
2. Idle API calls: with nothing changing, the sandbox's request counter over --idle seconds, per hour and per
   object (the supervisor's services only; the benchmark makes no call meanwhile).
3. Projected calls per day for three objects (Contact, Account, Opportunity) at the default settings: a poller
   (services/crm_poller) runs for --budget-seconds against an org whose daily limit is 100,000 calls (a
   Salesforce org's base allowance), once in cdc mode and once polling; its budget is the default share (50 %)
   of the limit read from /limits. Reported: the budget, the projection at the poller's pace, the calls it
   actually made per minute, and what polling every 2 s would project without the budget.

Run: .venv/bin/python bench/cdc.py [--rate 20] [--seconds 20] [--idle 60] [--budget-seconds 120]
                                   [--only freshness|budget] [--keep]   (prints tables; not a test)
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sync import (POLL_INTERVAL, SANDBOX_ACCOUNT, calls_per_minute, crm_to_campaign, wait_linked,  # noqa: E402
                  wait_quiet, world)

from crmsync import pg, process  # noqa: E402
from services.crm_poller import service as poller  # noqa: E402
from services.crm_poller.budget import SECONDS_PER_DAY  # noqa: E402

ORG_DAILY_LIMIT = 100_000  # Salesforce: 100,000 calls a day per org, plus per licence
OBJECTS = ("Contact", "Account", "Opportunity")
GOAL_P95 = 0.5


def freshness(root: Path, mode: str, rate: int, seconds: int, idle: int, console: Console) -> dict:
    """One pipeline in `mode` ("cdc": the default; "poll": cdc switched off on the account)."""
    n = rate * seconds
    with world(root, f"fresh-{mode}", max(n, 1000), console, account={"cdc": mode == "cdc"}) as w:
        w.supervisor.start()
        wait_linked(w, max(n, 1000), console)
        wait_quiet(w, console)
        console.print(f"[{mode}] counting API calls for {idle} s with nothing changing …")
        quiet = calls_per_minute(w, idle)
        with pg.connect(w.found.campaign_dsn, autocommit=True, application="crmsync-bench") as conn:
            crm_ids = [r[0] for r in conn.execute("SELECT crm_id FROM recipients WHERE crm_id IS NOT NULL ORDER BY "
                                                  "id LIMIT %s", (n,)).fetchall()]
        result = crm_to_campaign(w, crm_ids, rate, console)
    return {**result, "idle_per_hour": quiet["per_minute"] * 60, "idle_by_endpoint": quiet["by_endpoint"]}


def budget(root: Path, seconds: int, console: Console) -> dict:
    """A poller of three objects at the default settings, cdc and polling, for `seconds` each."""
    results = {}
    with world(root, "budget", 100, console, mappings=("accounts", "contacts", "purchases")) as w:
        w.sandbox.stats()  # answers
        _admin_limits(w, ORG_DAILY_LIMIT)
        for mode in ("cdc", "poll"):
            console.print(f"[budget] a poller of {', '.join(OBJECTS)} in {mode} mode for {seconds} s …")
            results[mode] = _run_poller(w, mode, seconds)
    return results


def _admin_limits(w, limit: int) -> None:
    import ssl

    import httpx

    httpx.post(f"{w.sandbox.url}/__sandbox/limits", json={"daily_api_max": limit, "api_usage_today": 0},
               headers={"X-Sandbox-Admin": w.sandbox.admin_token},
               verify=ssl.create_default_context(cafile=str(w.sandbox.ca_file)), timeout=30).raise_for_status()


def _run_poller(w, mode: str, seconds: int) -> dict:
    settings = w.settings
    account = settings.accounts[SANDBOX_ACCOUNT]
    if mode == "poll":
        account = account.model_copy(update={"cdc": False})
        settings = settings.model_copy(update={"accounts": {SANDBOX_ACCOUNT: account}})
    name = f"{SANDBOX_ACCOUNT}{mode}"
    settings = settings.model_copy(update={"accounts": {**settings.accounts, name: account}})
    p = poller.build(settings, w.found, name, OBJECTS, interval=POLL_INTERVAL)
    stop = threading.Event()
    thread = threading.Thread(target=p.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not all(o.snapshot_done for o in p.objects.values()) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2 * POLL_INTERVAL)  # past the first reads
        calls, started = sum(p.client.calls.values()), time.monotonic()
        time.sleep(seconds)
        per_minute = (sum(p.client.calls.values()) - calls) / (time.monotonic() - started) * 60
        paces = {obj: pace for obj, pace in p.pacer.paces.items()}
        unpaced = sum(pace.cost for pace in paces.values()) * SECONDS_PER_DAY / POLL_INTERVAL
        return {"budget": p.pacer.budget_per_day, "projected": p.pacer.projected_per_day(),
                "per_minute": per_minute, "unpaced": unpaced,
                "pushed": sorted(name for name, o in p.objects.items() if o.pushed),
                "intervals": {obj: p.pacer.interval(obj) for obj in paces}}
    finally:
        stop.set()
        thread.join(30)
        p.close()


def report(results: dict, console: Console, args: argparse.Namespace) -> None:
    table = Table(title="Salesforce CDC (Pub/Sub API) vs polling", show_lines=False)
    for column in ("measure", "cdc", "polling", "goal"):
        table.add_column(column)
    if "cdc" in results and "poll" in results:
        cdc, poll = results["cdc"], results["poll"]
        ok = cdc["p95"] <= GOAL_P95
        table.add_row(f"CRM → Campaign freshness p50 ({args.rate}/s for {args.seconds} s)", f"{cdc['p50']:.2f} s",
                      f"{poll['p50']:.2f} s", "")
        table.add_row("CRM → Campaign freshness p95", f"{cdc['p95']:.2f} s", f"{poll['p95']:.2f} s",
                      f"≤ {GOAL_P95} s {'met' if ok else 'MISSED'}")
        table.add_row("  arrived", f"{cdc['arrived']:,} of {cdc['sent']:,}", f"{poll['arrived']:,} of {poll['sent']:,}",
                      "")
        for (stage, c50, c95), (_, p50, p95) in zip(cdc["stages"], poll["stages"]):
            table.add_row(f"  {stage} p50 / p95", f"{c50:.2f} / {c95:.2f} s", f"{p50:.2f} / {p95:.2f} s", "")
        table.add_row(f"idle API calls per hour per object (1 object, {args.idle} s)",
                      f"{cdc['idle_per_hour']:.0f}", f"{poll['idle_per_hour']:.0f}",
                      f"0 after the subscription {'met' if cdc['idle_per_hour'] == 0 else 'MISSED'}")
    if b := results.get("budget"):
        cdc, poll = b["cdc"], b["poll"]
        table.add_row(f"3 objects, default settings: budget (50 % of {ORG_DAILY_LIMIT:,}/day)",
                      f"{cdc['budget']:,.0f}", f"{poll['budget']:,.0f}", "")
        table.add_row("  projected calls/day at the poller's pace", f"{cdc['projected']:,.0f}",
                      f"{poll['projected']:,.0f}", f"≤ budget {'met' if poll['projected'] <= poll['budget'] else 'MISSED'}")
        table.add_row("  calls per minute measured", f"{cdc['per_minute']:.1f}", f"{poll['per_minute']:.1f}", "")
        table.add_row("  polling every 2 s without a budget would project", "", f"{poll['unpaced']:,.0f}", "")
        table.add_row("  read through CDC / polled intervals", ", ".join(cdc["pushed"]) or "none",
                      ", ".join(f"{o} {s:.1f} s" for o, s in poll["intervals"].items()), "")
    console.print(table)


def main() -> None:
    process.interrupt_on_stop_signals()  # a SIGTERM (timeout, CI) unwinds: the servers started are stopped
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=20, help="CRM changes per second in the freshness runs")
    parser.add_argument("--seconds", type=int, default=20, help="length of each freshness run")
    parser.add_argument("--idle", type=int, default=60, help="seconds the idle API calls are counted")
    parser.add_argument("--budget-seconds", type=int, default=120, help="seconds each budget poller runs")
    parser.add_argument("--only", choices=("freshness", "budget"))
    parser.add_argument("--keep", action="store_true", help="keep the state directories")
    args = parser.parse_args()
    console = Console(width=150)
    root = Path(tempfile.mkdtemp(prefix="crmsync-bench-cdc-"))
    results: dict = {}
    try:
        if args.only in (None, "freshness"):
            for mode in ("cdc", "poll"):
                results[mode] = freshness(root, mode, args.rate, args.seconds, args.idle, console)
        if args.only in (None, "budget"):
            results["budget"] = budget(root, args.budget_seconds, console)
    finally:
        report(results, console, args)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
