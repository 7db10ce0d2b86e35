"""Two streams workers split the change topics' partitions (one consumer group, issue 16), and a worker killed
with SIGKILL mid-backfill, then started again, loses and duplicates nothing.

3,000 CRM contacts and 2,000 recipients (500 the same people) synced with two streams workers and two of each
writer (`crmsync run --workers 2`). Each streams worker logs every take it decided — the offset range per
topic-partition and when it started and finished (streams/app.py, DEBUG). Afterwards:
- never concurrent: two workers' takes of one topic-partition never overlap in time. A record's changes are on
  one partition of its topic, so no record was decided by two workers at once;
- both workers decided changes (the partitions really were split);
- nothing lost, nothing duplicated: both sides hold the same 4,500 people, each exactly once, linked once."""
from __future__ import annotations

import json
import os
import re
import signal
from collections import Counter
from dataclasses import replace
from itertools import combinations
from pathlib import Path

from crmsync import pg
from crmsync.run import Supervisor, plan
from tests.pipeline import contacts_pipeline
from tests.waiting import wait_for

PEOPLE = 3000 + 2000 - 500
DECIDED = re.compile(r"decided (\{.*\})")


def decided_takes(log_file: Path) -> list[dict]:
    """The takes a worker logged: {"partitions": {"topic:p": [lo, hi]}, "started": t, "finished": t}."""
    takes = []
    if not log_file.exists():
        return takes
    for line in log_file.read_text(errors="replace").splitlines():
        try:
            line = json.loads(line).get("msg", line)
        except (ValueError, AttributeError):
            pass
        found = DECIDED.search(str(line))
        if found:
            takes.append(json.loads(found.group(1)))
    return takes


def overlapping(takes_by_worker: dict[str, list[dict]]) -> list[tuple]:
    """Pairs of takes of one topic-partition by two workers whose times overlap."""
    spans: dict[str, list[tuple[str, float, float]]] = {}
    for worker, takes in takes_by_worker.items():
        for take in takes:
            for partition in take["partitions"]:
                spans.setdefault(partition, []).append((worker, take["started"], take["finished"]))
    return [(partition, a, b) for partition, found in spans.items() for a, b in combinations(found, 2)
            if a[0] != b[0] and a[1] < b[2] and b[1] < a[2]]


def test_two_streams_workers_split_partitions_and_survive_a_kill_9(tmp_path: Path):
    with contacts_pipeline(tmp_path / "state", contacts=3000, recipients=2000, shared=500) as world:
        specs = [replace(spec, args=["--log-level", "DEBUG"]) if spec.name == "streams" else spec
                 for spec in plan(world.settings, workers=2)]
        assert [s.label for s in specs if s.name == "streams"] == ["streams DEBUG 1", "streams DEBUG 2"]
        log_dir = world.state / "logs-scaled"
        supervisor = Supervisor(specs, world.found, world.config_file, log_dir)
        logs = {label: log_dir / f"{label.replace(' ', '-')}.log" for label in ("streams DEBUG 1", "streams DEBUG 2")}
        try:
            supervisor.start()
            wait_for(lambda: decided_takes(logs["streams DEBUG 1"]), 180, "worker 1's first decided take",
                     supervisor)
            victim = supervisor.children["streams DEBUG 1"]
            os.kill(victim.pid, signal.SIGKILL)  # mid-backfill: its last take may be decided but not committed
            victim.wait()
            wait_for(lambda: supervisor.restarts.get("streams DEBUG 1"), 60, "worker 1 started again", supervisor)
            checker, mapping = world.checker(), world.settings.mappings[0]
            report = wait_for(lambda: (r := checker.compare(mapping)).converged and r, 600, "convergence",
                              supervisor, every=3)
            assert report.converged
            crm_emails = Counter(r["Email"].strip().lower()
                                 for page in world.client.query_all_pages("SELECT Email FROM Contact") for r in page)
            with pg.connect(world.found.campaign_dsn) as conn:
                campaign_emails = Counter(e.strip().lower() for (e,) in conn.execute("SELECT email FROM recipients"))
                links = conn.execute("SELECT count(*), count(DISTINCT crm_id), count(DISTINCT campaign_key) "
                                     "FROM crmsync.sync_state WHERE mapping = 'contacts'").fetchone()
        finally:
            supervisor.stop()
        takes = {label: decided_takes(path) for label, path in logs.items()}
    assert sum(crm_emails.values()) == PEOPLE and max(crm_emails.values()) == 1  # nothing duplicated in the CRM
    assert sum(campaign_emails.values()) == PEOPLE and max(campaign_emails.values()) == 1
    assert set(crm_emails) == set(campaign_emails)  # nothing lost either way
    assert tuple(links) == (PEOPLE, PEOPLE, PEOPLE)  # one link per person, each side's record in one link
    assert all(takes.values()), {label: len(t) for label, t in takes.items()}  # both workers decided
    assert overlapping(takes) == []
