"""Example 2 (incremental user import with its watermark) and example 4 (scheduled lead export with write-back),
fired by the scheduler with an injected clock."""
from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone

from crmsync.workflow import options
from crmsync.workflow.scheduler import run_scheduled

from .conftest import ACCOUNT, EXAMPLES, Env


def new_user(client, tag: str, department: str) -> str:
    result = client.collections_create("User", [{"Username": f"user.{tag}@crmsync.example", "LastName": f"User {tag}",
                                                 "Email": f"user.{tag}@crmsync.example", "Alias": tag[:8],
                                                 "Department": department}])[0]
    assert result["success"], result
    return result["id"]


def activity(result, name: str):
    return next(a for a in result.activities if a.name == name)


def test_incremental_user_import_moves_its_watermark(env: Env, client) -> None:
    tag = uuid.uuid4().hex[:6]
    first = new_user(client, tag, "Marketing")
    option = f"LASTIMPORT_{ACCOUNT}_users"

    result = env.run("02-incremental-users.yaml")

    assert result.ok, [(a.name, a.message) for a in result.activities]
    assert env.rows("SELECT folder, crm_account, active FROM operators WHERE crm_id = %s", (first,)) == \
        [("Marketing", ACCOUNT, True)]
    everyone = env.rows("SELECT count(*) FROM operators")[0][0]
    assert everyone >= 5  # the first window is open-ended: the API user, the sales owners, ours
    mark = env.rows("SELECT value FROM crmsync.options WHERE name = %s", (option,))[0][0]
    moment = datetime.strptime(mark, options.FORMAT).replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - moment).total_seconds()) < 60
    assert activity(result, "users").outputs.note.endswith(f"[-∞, {mark})")

    client.collections_update("User", [{"id": first, "Department": "Sales"}])
    second = new_user(client, uuid.uuid4().hex[:6], "Support")
    again = env.run("02-incremental-users.yaml")

    assert again.ok
    imported = {r["Id"]: r["modified"] for r in activity(again, "users").outputs.ok}
    assert {first, second} <= set(imported)  # what changed in [previous end, now)…
    for user in set(imported) - {first, second}:  # …and only the sub-second overlap the rounded-down option adds
        assert moment <= datetime.fromisoformat(imported[user].replace("Z", "+00:00")) < moment + timedelta(seconds=1)
    assert activity(again, "users").outputs.note.endswith(f"[{mark}, "
                                                          f"{env.rows('SELECT value FROM crmsync.options')[0][0]})")
    assert env.rows("SELECT folder FROM operators WHERE crm_id = %s", (first,)) == [("Sales",)]
    assert env.rows("SELECT count(*) FROM operators")[0][0] == everyone + 1

    listing = env.cli("list-watermarks")
    output = listing.communicate(timeout=120)[0].decode()
    assert listing.returncode == 0 and option in output


def test_a_failed_run_leaves_the_watermark_where_it_was(env: Env, client, tmp_path) -> None:
    text = (EXAMPLES / "02-incremental-users.yaml").read_text().replace("table: operators", "table: no_such_table")
    broken = tmp_path / "02.yaml"
    broken.write_text(text)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "users.py").write_text((EXAMPLES / "scripts" / "users.py").read_text())
    result = env.run(broken)
    assert not result.ok and "no_such_table" in activity(result, "user-update").message
    assert env.rows("SELECT count(*) FROM crmsync.options") == [(0,)]


def test_scheduler_fires_the_lead_export_which_writes_back_ids_and_status(env: Env, client) -> None:
    tag = uuid.uuid4().hex[:6]
    leads = [r[0] for r in env.rows(
        "INSERT INTO leads (first_name, last_name, company, email, country, send_to_crm) VALUES "
        "('Lea', %s, 'Acme', %s, 'France', true), ('Lou', %s, 'Bolt', %s, 'Japan', true), "
        "('Not', %s, 'Nope', %s, 'Spain', false) RETURNING id",
        (f"L1 {tag}", f"l1.{tag}@example.com", f"L2 {tag}", f"l2.{tag}@example.com", f"L3 {tag}",
         f"l3.{tag}@example.com"))]
    start = datetime(2026, 1, 1, 10, 0, 30, tzinfo=timezone.utc)
    ticks = iter(start + timedelta(seconds=20 * i) for i in range(10_000))
    now = [start]

    def clock() -> datetime:
        now[0] = next(ticks)
        return now[0]

    stop, fired = threading.Event(), []

    def done(path, result) -> None:
        fired.append((now[0], result))
        stop.set()

    runner = threading.Thread(target=run_scheduled, args=([EXAMPLES / "04-scheduled-lead-export.yaml"], stop),
                              kwargs={"settings": env.settings, "endpoints": env.endpoints, "clock": clock,
                                      "poll_seconds": 0.001, "on_result": done})
    runner.start()
    runner.join(timeout=180)
    assert not runner.is_alive()

    (moment, result), = fired
    assert moment >= datetime(2026, 1, 1, 10, 15, tzinfo=timezone.utc)  # "*/15 * * * *": not before 10:15
    assert moment < datetime(2026, 1, 1, 10, 16, tzinfo=timezone.utc)
    assert result.ok, [(a.name, a.message) for a in result.activities]
    written = env.rows("SELECT id, crm_id, crm_status, crm_account FROM leads ORDER BY id")
    assert [(r[2], r[3]) for r in written] == [("created", ACCOUNT), ("created", ACCOUNT), (None, None)]
    ids = [r[1] for r in written[:2]]
    in_crm = {r["Id"]: r for page in client.query_all_pages(
        f"SELECT Id, Campaign_Key__c, Country, Owner.Username FROM Lead WHERE Id IN ('{ids[0]}', '{ids[1]}')")
        for r in page}
    assert in_crm[ids[0]]["Campaign_Key__c"] == str(leads[0])
    owners = {in_crm[i]["Country"]: in_crm[i]["Owner"]["Username"] for i in ids}
    assert owners == {"France": "emea.sales@crmsync.example", "Japan": "apac.sales@crmsync.example"}  # rule used
    assert env.rows("SELECT count(*) FROM crmsync.identity_links WHERE crm_object = 'Lead'") == [(2,)]


def test_crmsync_run_supervisor_starts_and_stops_the_scheduler(env: Env, tmp_path) -> None:
    import yaml

    from crmsync.run import Supervisor

    data = yaml.safe_load(env.config_file.read_text())
    data["workflows"] = [str(EXAMPLES / "04-scheduled-lead-export.yaml")]
    env.config_file.write_text(yaml.safe_dump(data))
    supervisor = Supervisor([], env.endpoints, env.config_file, tmp_path / "logs")
    supervisor.start()
    try:
        (thread,) = [t for t in threading.enumerate() if t.name == "workflows"]
        assert thread.is_alive()
    finally:
        supervisor.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_every_minute_fires_once_per_minute_of_the_injected_clock(env: Env, tmp_path) -> None:
    import yaml

    path = tmp_path / "minutely.yaml"
    path.write_text(yaml.safe_dump({"name": "minutely", "schedule": "* * * * *", "activities": [
        {"name": "count", "type": "query", "table": "recipients", "columns": ["id"]}]}))
    now = [datetime(2026, 1, 1, 10, 0, 5, tzinfo=timezone.utc)]

    def clock() -> datetime:
        now[0] += timedelta(seconds=7)
        return now[0]

    stop, fired = threading.Event(), []

    def done(_path, result) -> None:
        fired.append((now[0].replace(second=0), result.ok))
        if len(fired) == 3:
            stop.set()

    run_scheduled([path], stop, settings=env.settings, endpoints=env.endpoints, clock=clock, poll_seconds=0,
                  on_result=done)
    assert fired == [(datetime(2026, 1, 1, 10, m, tzinfo=timezone.utc), True) for m in (1, 2, 3)]
    assert env.rows("SELECT count(*), count(*) FILTER (WHERE status = 'succeeded') FROM crmsync.workflow_runs") == \
        [(3, 3)]
